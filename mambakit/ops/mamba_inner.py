"""The Mamba mixer between its input and output projections as one autograd op with a
hand-written backward (CPU, fp32, whole sequences from a zero state — what training runs):

    x, z   = the two halves of xz = in_proj(hidden)    (b, l, d) views, never copied
    u      = SiLU(conv1d(x) + conv_bias)               (b, d, l)   csrc/causal_conv1d.cpp
    x_dbl  = u x_projᵀ = [dt_low, B, C]                (b, l, r + 2n)
    Δ      = dt_proj dt_low                            (b, d, l)   softplus(Δ + dt_bias) in the scan
    v      = S6(u, Δ, A = -exp(A_log), B, C, D)        (b, d, l)   csrc/selective_scan.cpp, ungated
    y      = v · SiLU(z);  out = y out_projᵀ + b       (b, l, d_model)

Why: autograd through the unfused ops keeps ~22 MB of (b, d, l) fp32 tensors per 130M layer at
L = 512 (the padded conv input, the conv and SiLU outputs, contiguous copies of Δ and z, the
scan's v, the gated y); this op keeps xz, v, x_dbl and the scan's checkpoints (~10 MB) and
recomputes u, Δ and y in the backward: elementwise work and a rank-r GEMM, small beside the scan.
The conv kernel reads x in place from xz and writes dx straight into xz's gradient, so neither the
padded copy nor the transposes of the unfused path exist. The twin is `mamba_inner_ref`
(ops.causal_conv1d and ops.selective_scan_ref, differentiated by autograd).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops import cpu_kernels, scan_cpu
from mambakit.ops.conv import causal_conv1d
from mambakit.ops.cpu_kernels import ptr
from mambakit.ops.registry import needs_grad
from mambakit.ops.scan import selective_scan_ref

MAX_D_CONV = 8  # the conv kernel's per-thread dw accumulator holds 8 taps


def mamba_inner_ref(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
                    dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, out_weight: Tensor,
                    out_bias: Optional[Tensor] = None) -> Tensor:
    """The spec: xz (b, l, 2d) -> (b, l, d_model). conv_weight (d, k), x_proj_weight (r + 2n, d),
    dt_proj_weight (d, r), dt_bias, D (d,), A_log (d, n), out_weight (d_model, d)."""
    r, n = dt_proj_weight.shape[1], A_log.shape[1]
    x, z = (t.transpose(1, 2) for t in xz.chunk(2, dim=-1))                   # (b, d, l) each
    u = F.silu(causal_conv1d(x, conv_weight, conv_bias)[0])                   # (b, d, l)
    dt, B, C = F.linear(u.transpose(1, 2), x_proj_weight).split([r, n, n], dim=-1)
    delta = F.linear(dt, dt_proj_weight).transpose(1, 2)                      # (b, d, l)
    y = selective_scan_ref(u, delta, -torch.exp(A_log.float()), B.transpose(1, 2), C.transpose(1, 2), D,
                           z=z, delta_bias=dt_bias, delta_softplus=True)      # (b, d, l)
    return F.linear(y.transpose(1, 2), out_weight, out_bias)                 # (b, l, d_model)


def _conv_scratch(xz: Tensor, k: int, threads: int, rows: int) -> Tensor:
    """Per-thread buffers of the conv kernel: `rows` blocks of 16 channels × (l + k - 1) steps."""
    return xz.new_empty(threads, rows * 16, xz.shape[1] + k - 1)


def conv1d_silu(xz: Tensor, weight: Tensor, bias: Optional[Tensor], lib=None, state: Optional[Tensor] = None,
                state_out: Optional[Tensor] = None, time_major: bool = False) -> Tensor:
    """SiLU(causal depthwise conv of xz's first half): xz (b, l, 2d) contiguous fp32, weight (d, k)
    -> u (b, d, l), or (b, l, d) if `time_major`. `state` (b, d, k - 1): the inputs before xz's first
    step (zeros if None); `state_out` (b, d, k - 1), if given, receives those after its last.
    `lib`: another build of the kernels (tests); default the cached one."""
    b, l, d2 = xz.shape
    d, k = weight.shape
    threads = torch.get_num_threads()
    if time_major:  # the kernel's row path: no scratch
        u, scratch, strides = xz.new_empty(b, l, d), None, (l * d, 1, d)     # u's batch, channel, time strides
    else:
        u, scratch, strides = xz.new_empty(b, d, l), _conv_scratch(xz, k, threads, 2), (d * l, l, 1)
    (lib or cpu_kernels.library()).mk_conv1d_silu_fwd_f32(
        ptr(xz), l * d2, d2, ptr(state), ptr(weight), ptr(bias), ptr(u), *strides, ptr(state_out),
        ptr(scratch), b, d, l, k, threads)                                  # scratch held for the call
    return u


def conv1d_silu_backward(xz: Tensor, weight: Tensor, bias: Optional[Tensor], du: Tensor, dxz: Tensor,
                         lib=None) -> tuple[Tensor, Optional[Tensor]]:
    """Gradients of `conv1d_silu` from du (b, d, l) contiguous: writes dx into dxz's first half
    (b, l, 2d, contiguous); returns (dweight (d, k), dbias (d,) or None)."""
    b, l, d2 = xz.shape
    d, k = weight.shape
    threads = torch.get_num_threads()
    dw, db = torch.empty_like(weight), None if bias is None else torch.empty_like(bias)
    scratch = _conv_scratch(xz, k, threads, 3)                                 # held for the call
    (lib or cpu_kernels.library()).mk_conv1d_silu_bwd_f32(
        ptr(xz), l * d2, d2, None, ptr(weight), ptr(bias), ptr(du), d * l, l, 1, ptr(dxz), l * d2, d2,
        ptr(dw), ptr(db), ptr(scratch), b, d, l, k, threads)
    return dw, db


def gate_ref(xz: Tensor, v: Tensor) -> Tensor:
    """The spec of `gate_silu`: v (b, d, l) · SiLU(z) for z the second half of xz (b, l, 2d) -> (b, l, d)."""
    return F.silu(xz[..., xz.shape[-1] // 2:]).mul(v.transpose(1, 2)).contiguous()


def gate_silu(xz: Tensor, v: Tensor, lib=None) -> Tensor:
    """`gate_ref` in one pass (csrc/causal_conv1d.cpp, mk_gate_silu_f32): xz (b, l, 2d) and v
    (b, d, l) contiguous fp32, shapes as the fused op's forward makes them (checked by the caller's
    check_mamba_inner_inputs; v is its own). `lib`: another build of the kernels (tests)."""
    b, l, d2 = xz.shape
    d = d2 // 2
    if (v.shape != (b, d, l) or not (v.is_contiguous() and xz.is_contiguous()) or v.dtype != torch.float32
            or xz.dtype != torch.float32 or d2 % 2):
        raise ValueError(f"gate_silu: needs xz (b, l, 2d) and v (b, d, l) contiguous fp32, got {tuple(xz.shape)}, "
                         f"{tuple(v.shape)}")
    y = xz.new_empty(b, l, d)
    (lib or cpu_kernels.library()).mk_gate_silu_f32(ptr(v), ptr(xz) + d * 4, l * d2, d2, ptr(y), b, d, l,
                                                    torch.get_num_threads())
    return y


def _scan_dims(b: int, d: int, l: int, n: int) -> dict:
    return dict(b=b, d=d, l=l, n=n, g=1, chunk=scan_cpu.CHUNK, softplus=1,
                threads=max(1, min(torch.get_num_threads(), b * d)))


def _delta(dt_proj_weight: Tensor, x_dbl: Tensor) -> Tensor:
    """Δ before bias and softplus, W_dt dt_lowᵀ (b, d, l), written in that layout by one batched GEMM
    (torch.matmul of the 2-D weight and a 3-D operand computes (b·l, d) and copies it transposed)."""
    r = dt_proj_weight.shape[1]
    return torch.bmm(dt_proj_weight.expand(x_dbl.shape[0], -1, -1), x_dbl[..., :r].transpose(1, 2))


def _bc(x_dbl: Tensor, r: int, n: int) -> tuple[Tensor, Tensor]:
    """B, C in the scan kernel's (b, 1, l, n) layout, from x_dbl (b, l, r + 2n)."""
    return (x_dbl[:, None, :, r:r + n].contiguous(), x_dbl[:, None, :, r + n:].contiguous())


def _forward(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
             dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, keep: bool = False,
             conv_state: Optional[Tensor] = None, ssm_state: Optional[Tensor] = None,
             conv_state_out: Optional[Tensor] = None, ssm_state_out: Optional[Tensor] = None):
    """Everything between in_proj and out_proj: (y (b, l, d), x_dbl, v, ckpt); v and the scan's
    checkpoints only when `keep` (a backward follows). The states, if given, are carried in (None:
    zeros) and written out."""
    b, l, d2 = xz.shape
    d, r, n = d2 // 2, dt_proj_weight.shape[1], A_log.shape[1]
    u = conv1d_silu(xz, conv_weight, conv_bias, state=conv_state, state_out=conv_state_out)   # (b, d, l)
    x_dbl = F.linear(u.transpose(1, 2), x_proj_weight)                      # (b, l, r + 2n)
    delta = _delta(dt_proj_weight, x_dbl)                                   # (b, d, l)
    B, C = _bc(x_dbl, r, n)
    v = torch.empty_like(u)                                                 # (b, d, l)
    ckpt = u.new_empty(b, d, -(-l // scan_cpu.CHUNK), n) if keep else None
    last = ssm_state_out if ssm_state_out is not None else u.new_empty(b, d, n)
    scan_cpu._call("fwd", torch.float32, u=u, delta=delta, A=-torch.exp(A_log), B=B, C=C, D=D, z=None,
                   delta_bias=dt_bias, reset=None, h0=ssm_state, out=v, last=last, ckpt=ckpt, v=None,
                   **_scan_dims(b, d, l, n))
    return gate_silu(xz, v), x_dbl, v, ckpt                                 # y (b, l, d)


def _infer(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
           dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, conv_state: Optional[Tensor] = None,
           ssm_state: Optional[Tensor] = None, conv_state_out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The inference forward between the projections: (y (b, l, d), the final SSM state (b, d, n)).
    Where the time-major scan applies (n = 16, d a multiple of 8: every Mamba-1 preset) every
    operand stays (b, l, ·) as the GEMMs write it — u from the conv, Δ = dt_low W_dtᵀ, B, C and z
    read in place — so nothing is transposed; otherwise `_forward`'s channel-major path."""
    b, l, d2 = xz.shape
    d, r, n = d2 // 2, dt_proj_weight.shape[1], A_log.shape[1]
    if not scan_cpu.scan_rows_applies(d, n):
        last = xz.new_empty(b, d, n)
        y = _forward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                     conv_state=conv_state, ssm_state=ssm_state, conv_state_out=conv_state_out,
                     ssm_state_out=last)[0]
        return y, last
    u = conv1d_silu(xz, conv_weight, conv_bias, state=conv_state, state_out=conv_state_out, time_major=True)
    x_dbl = F.linear(u, x_proj_weight)                                      # (b, l, r + 2n)
    delta = F.linear(x_dbl[..., :r], dt_proj_weight)                        # (b, l, d)
    return scan_cpu.scan_rows_fwd(u, delta, -torch.exp(A_log), x_dbl[..., r:r + n], x_dbl[..., r + n:], D,
                                  xz[..., d:], dt_bias, ssm_state, delta_softplus=True)


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                out_weight, out_bias):
        y, x_dbl, v, ckpt = _forward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log,
                                     D, keep=True)
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                              out_weight, x_dbl, v, ckpt)
        ctx.has_out_bias = out_bias is not None
        return F.linear(y, out_weight, out_bias)                                # (b, l, d_model)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D, out_weight, x_dbl, v, ckpt = \
            ctx.saved_tensors
        b, l, d2 = xz.shape
        d, r, n = d2 // 2, dt_proj_weight.shape[1], A_log.shape[1]
        dims = _scan_dims(b, d, l, n)
        dout = dout.contiguous()                                                # (b, l, d_model)
        z = xz[..., d:]                                                         # (b, l, d)
        sz = torch.sigmoid(z)
        silu_z = z * sz
        vt = v.transpose(1, 2)                                                  # (b, l, d) view
        dy = dout @ out_weight                                                  # (b, l, d)
        d_out_w = dout.flatten(0, 1).T @ (silu_z * vt).flatten(0, 1)            # (d_model, d)
        d_out_b = dout.sum((0, 1)) if ctx.has_out_bias else None
        dxz = torch.empty_like(xz)
        # y = v · z σ(z):  dv = dy · SiLU(z),  dz = dy · v · σ(z)(1 + z(1 - σ(z)))
        torch.mul(dy * vt, sz * (1 + z * (1 - sz)), out=dxz[..., d:])
        dv = (dy * silu_z).transpose(1, 2).contiguous()                         # (b, d, l)
        del dy, sz, silu_z

        u = conv1d_silu(xz, conv_weight, conv_bias)                             # recomputed (b, d, l)
        delta = _delta(dt_proj_weight, x_dbl)                                   # recomputed (b, d, l)
        A = -torch.exp(A_log)
        B, C = _bc(x_dbl, r, n)
        partial = u.new_zeros(2, dims["threads"], b, 1, l, n)                   # per-thread dB, dC
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA, dD = u.new_empty(b, d, n), u.new_empty(b, d)                       # per-batch partials
        scan_cpu._call("bwd", torch.float32, u=u, delta=delta, A=A, B=B, C=C, D=D, z=None, delta_bias=dt_bias,
                       reset=None, h0=None, out=None, last=None, ckpt=ckpt, v=None, dout=dv, dlast=None,
                       du=du, ddelta=ddelta, dA=dA, dB=partial[0], dC=partial[1], dD=dD, dz=None, dh0=None, **dims)
        del delta, dv
        dB, dC = partial.sum(1)[:, :, 0]                                        # (b, l, n) each
        dt_low = x_dbl[..., :r]                                                 # (b, l, r)
        d_dt_w = torch.bmm(ddelta, dt_low).sum(0)                               # (d, r)
        dx_dbl = torch.cat([ddelta.transpose(1, 2) @ dt_proj_weight, dB, dC], dim=-1)  # (b, l, r + 2n)
        d_dt_bias = ddelta.sum((0, 2))
        del ddelta
        d_xp_w = torch.bmm(dx_dbl.transpose(1, 2), u.transpose(1, 2)).sum(0)   # (r + 2n, d)
        du.baddbmm_(x_proj_weight.T.expand(b, d, r + 2 * n), dx_dbl.transpose(1, 2))  # += W_xᵀ dx_dblᵀ
        d_conv_w, d_conv_b = conv1d_silu_backward(xz, conv_weight, conv_bias, du, dxz)
        return (dxz, d_conv_w, d_conv_b, d_xp_w, d_dt_w, d_dt_bias, dA.sum(0) * A, dD.sum(0), d_out_w,
                d_out_b)


def check_mamba_inner_inputs(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                             x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor,
                             D: Tensor, out_weight: Tensor, out_bias: Optional[Tensor]) -> None:
    """The CPU kernels present, and every shape, dtype, device and layout they assume, checked before the call."""
    def fail(msg: str):
        raise ValueError(f"mamba_inner: {msg}")

    reason = cpu_kernels.available(xz.device)
    if reason is not None:
        fail(f"the CPU kernels are not available: {reason}")
    named = dict(xz=xz, conv_weight=conv_weight, conv_bias=conv_bias, x_proj_weight=x_proj_weight,
                 dt_proj_weight=dt_proj_weight, dt_bias=dt_bias, A_log=A_log, D=D, out_weight=out_weight,
                 out_bias=out_bias)
    for name, t in named.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()):
            fail(f"{name} must be a contiguous fp32 CPU tensor, got {t.dtype} on {t.device}")
    if xz.dim() != 3 or xz.shape[-1] % 2 or 0 in xz.shape:
        fail(f"xz must be (b, l, 2d) with b, l > 0, got {tuple(xz.shape)}")
    d = xz.shape[-1] // 2
    if A_log.dim() != 2 or A_log.shape[0] != d:
        fail(f"A_log must be ({d}, n), got {tuple(A_log.shape)}")
    if dt_proj_weight.dim() != 2 or dt_proj_weight.shape[0] != d:
        fail(f"dt_proj_weight must be ({d}, r), got {tuple(dt_proj_weight.shape)}")
    r, n = dt_proj_weight.shape[1], A_log.shape[1]
    expected = dict(conv_weight=(d, conv_weight.shape[-1]), conv_bias=(d,), x_proj_weight=(r + 2 * n, d),
                    dt_bias=(d,), D=(d,), out_weight=(out_weight.shape[0], d), out_bias=(out_weight.shape[0],))
    for name, shape in expected.items():
        t = named[name]
        if t is not None and tuple(t.shape) != shape:
            fail(f"{name} must be {shape}, got {tuple(t.shape)}")
    if not 1 <= conv_weight.shape[-1] <= MAX_D_CONV:
        fail(f"d_conv must be in [1, {MAX_D_CONV}], got {conv_weight.shape[-1]}")


def mamba_inner(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
                dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, out_weight: Tensor,
                out_bias: Optional[Tensor] = None) -> Tensor:
    """`mamba_inner_ref` through the fused CPU kernels (fp32, contiguous inputs; see the module
    docstring); raises ValueError if they are unavailable or an input does not fit."""
    check_mamba_inner_inputs(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                             out_weight, out_bias)
    if needs_grad(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D, out_weight, out_bias):
        return _MambaInner.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                                 out_weight, out_bias)
    y = _infer(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D)[0]
    return F.linear(y, out_weight, out_bias)                                    # (b, l, d_model)


def mamba_inner_continue(xz: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor,
                         dt_proj_weight: Tensor, dt_bias: Tensor, A_log: Tensor, D: Tensor, out_weight: Tensor,
                         out_bias: Optional[Tensor], conv_state: Tensor, ssm_state: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """`mamba_inner` continuing from a carried state — prefill in chunks, generation — for inference
    (no autograd): conv_state (b, d, k - 1), ssm_state (b, d, n), contiguous fp32. Returns (out
    (b, l, d_model), the conv state and the SSM state after xz's last step), new tensors. Its twin
    is the mixer's unfused path (ops.causal_conv1d and the scan with initial and final states)."""
    check_mamba_inner_inputs(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                             out_weight, out_bias)
    b, l, d2 = xz.shape
    d, k, n = d2 // 2, conv_weight.shape[-1], A_log.shape[1]
    for name, t, shape in (("conv_state", conv_state, (b, d, k - 1)), ("ssm_state", ssm_state, (b, d, n))):
        if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"mamba_inner: {name} must be a contiguous fp32 CPU tensor of shape {shape}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    if needs_grad(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D, out_weight,
                  out_bias, conv_state, ssm_state):
        raise ValueError("mamba_inner_continue is inference-only: run it under torch.no_grad() or "
                         "torch.inference_mode()")
    conv_out = torch.empty_like(conv_state)
    y, ssm_out = _infer(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                        conv_state=conv_state, ssm_state=ssm_state, conv_state_out=conv_out)
    return F.linear(y, out_weight, out_bias), conv_out, ssm_out
