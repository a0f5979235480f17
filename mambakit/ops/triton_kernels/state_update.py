"""Triton kernel of the one-token selective state update (decode); contract in ops/state_update.py.

One program per (batch row, block of BLOCK_D channels): h_t = exp(Δ A) h_{t-1} + Δ B x,
y = (C·h_t + D x)·SiLU(z), read and written once — the whole step is one launch per layer.
"""
import triton
import triton.language as tl

from mambakit.ops.triton_kernels.common import row_sum, softplus


@triton.jit
def selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, new_state_ptr,
    d, n, g, stride_x, stride_dt, stride_z, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """state, new_state (b, d, n) contiguous; x, dt, z, y (b, d) rows with the given strides (y
    contiguous); B, C (b, g, n) with strides (stride_*b, stride_*g, 1); A (d, n); D, bias (d,)."""
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    row = pid_b.to(tl.int64)
    group = offs_d // (d // g)                                        # channel c reads group c·g/d
    x = tl.load(x_ptr + row * stride_x + offs_d, mask=mask_d, other=0.0).to(ACC)
    delta = tl.load(dt_ptr + row * stride_dt + offs_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        delta += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if SOFTPLUS:
        delta, _ = softplus(delta)
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0).to(ACC)
    B = tl.load(B_ptr + row * stride_Bb + group[:, None] * stride_Bg + offs_n[None, :], mask=mask_dn,
                other=0.0).to(ACC)
    C = tl.load(C_ptr + row * stride_Cb + group[:, None] * stride_Cg + offs_n[None, :], mask=mask_dn,
                other=0.0).to(ACC)
    state = (row * d + offs_d)[:, None] * n + offs_n[None, :]
    h = tl.load(state_ptr + state, mask=mask_dn, other=0.0).to(ACC)
    h = tl.exp(delta[:, None] * A) * h + (delta * x)[:, None] * B     # (BLOCK_D, BLOCK_N)
    tl.store(new_state_ptr + state, h, mask=mask_dn)
    y = row_sum(h * C, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(ACC) * x
    if HAS_Z:
        z = tl.load(z_ptr + row * stride_z + offs_d, mask=mask_d, other=0.0).to(ACC)
        y *= z / (1.0 + tl.exp(-z))
    tl.store(y_ptr + row * d + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
