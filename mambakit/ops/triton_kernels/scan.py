"""Triton kernels of the selective scan (S6); launched by ops/scan_triton.py, which owns the contract.

Glossary as in ops/scan.py. One program owns (batch b, group g, a block of BLOCK_D channels of that
group): its B_t/C_t rows are shared by every channel of the block, and its state h (BLOCK_D, n)
lives in registers for the whole sequence — the expanded (b, d, l, n) state never reaches memory.
Time is walked one step at a time inside chunks of CHUNK steps: the forward saves h at the start
of each chunk (O(b·d·n·l/CHUNK) memory), and the backward, chunk by chunk from the end, recomputes
that chunk's states from its checkpoint into a per-program scratch tile (CHUNK, BLOCK_D, n) that
stays in cache, then walks the chunk backwards.

Backward of h_t = a_t h_{t-1} + b_t (a_t = exp(Δ_t A)·keep_t, b_t = Δ_t B_t u_t) and
y_t = (C_t·h_t + D u_t)·SiLU(z_t), with λ_t = ∂L/∂h_t (the total adjoint of the state):
    λ_t = ds_t C_t + ν_{t+1},  ν_t = a_t λ_t   (ν carried backwards; ν after step 0 is ∂L/∂h_{-1})
    ∂L/∂a_t · a_t = λ_t (a_t h_{t-1}) = λ_t (h_t - b_t)     (no h_{t-1}: no shifted state needed)
so ∂Δ_t = Σ_n λ (B u + (h - b) A), ∂A = Σ_t Δ λ (h - b), ∂B_t = Σ_d λ Δ u, ∂C_t = Σ_d ds h.

Padded lanes (channels ≥ d/g, states ≥ n) load A = 0, u = B = C = 0 and dout = 0, so their a = 1,
b = 0 and λ = 0: they never need masking inside the time loops, only at stores.
"""
import triton
import triton.language as tl

from mambakit.ops.triton_kernels.common import inline_when_interpreted, row_sum, softplus


@inline_when_interpreted
@triton.jit
def _step_inputs(t, u_row, delta_row, B_col, C_col, reset_row, mask_d, mask_n, bias,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr,
                 ACC: tl.constexpr):
    """Step t: u_t, Δ_t, ∂Δ_t/∂δ_t (1 or sigmoid) (BLOCK_D,); B_t, C_t (BLOCK_N,); keep_t."""
    u = tl.load(u_row + t, mask=mask_d, other=0.0).to(ACC)
    delta = tl.load(delta_row + t, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        delta += bias
    ddelta = 1.0
    if SOFTPLUS:
        delta, ddelta = softplus(delta)
    Bt = tl.load(B_col + t, mask=mask_n, other=0.0).to(ACC)
    Ct = tl.load(C_col + t, mask=mask_n, other=0.0).to(ACC)
    keep = 1.0
    if HAS_RESET:
        keep = 1.0 - tl.load(reset_row + t).to(ACC)
    return u, delta, ddelta, Bt, Ct, keep


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, reset_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    d, l, n, g, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr, SAVE_CKPT: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """u, delta, z, out (b, d, l); B, C (b, g, n, l); A (d, n); h0, last (b, d, n);
    reset (b, l) uint8; ckpt (b, d, n_chunks, n): h at the start of each chunk."""
    pid_b, pid_g, pid_blk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_c < d // g
    chan = pid_b.to(tl.int64) * d + pid_g * (d // g) + offs_c        # (BLOCK_D,) row of (b·d)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    state = chan[:, None] * n + offs_n[None, :]                       # (BLOCK_D, BLOCK_N) in (b, d, n)
    bc = (pid_b.to(tl.int64) * g + pid_g) * n * l + offs_n * l        # (BLOCK_N,) rows of (b, g, n, l)
    u_row, delta_row, z_row, out_row = u_ptr + chan * l, delta_ptr + chan * l, z_ptr + chan * l, out_ptr + chan * l
    B_col, C_col, reset_row = B_ptr + bc, C_ptr + bc, reset_ptr + pid_b.to(tl.int64) * l
    A = tl.load(A_ptr + (chan % d)[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0).to(ACC)
    Dv = tl.load(D_ptr + chan % d, mask=mask_d, other=0.0).to(ACC) if HAS_D else 0.0
    bias = tl.load(bias_ptr + chan % d, mask=mask_d, other=0.0).to(ACC) if HAS_BIAS else 0.0
    if HAS_H0:
        h = tl.load(h0_ptr + state, mask=mask_dn, other=0.0).to(ACC)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), ACC)
    for k in range(0, n_chunks):
        if SAVE_CKPT:
            tl.store(ckpt_ptr + (chan * n_chunks + k)[:, None] * n + offs_n[None, :], h, mask=mask_dn)
        for t in range(k * CHUNK, tl.minimum(k * CHUNK + CHUNK, l)):
            u, delta, _, Bt, Ct, keep = _step_inputs(
                t, u_row, delta_row, B_col, C_col, reset_row, mask_d, mask_n, bias,
                HAS_BIAS, SOFTPLUS, HAS_RESET, ACC)
            # h_t = Ā_t h_{t-1} + B̄_t u_t, Ā_t = exp(Δ_t A)
            h = tl.exp(delta[:, None] * A) * keep * h + (delta * u)[:, None] * Bt[None, :]
            y = row_sum(h * Ct[None, :], axis=1) + Dv * u              # (BLOCK_D,)
            if HAS_Z:
                zt = tl.load(z_row + t, mask=mask_d, other=0.0).to(ACC)
                y *= zt / (1.0 + tl.exp(-zt))                         # SiLU(z)
            tl.store(out_row + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    tl.store(last_ptr + state, h, mask=mask_dn)


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, reset_ptr, ckpt_ptr,
    dout_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dh0_ptr,
    d, l, n, g, n_chunks, n_blocks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, HAS_RESET: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Gradients of every input. du, ddelta, dz (b, d, l) and dh0 (b, d, n) are written; dB, dC
    (b, g, n, l) are accumulated atomically (zero-initialised); dA (b, d, n) and dD (b, d) are
    per-batch partials. scratch: (programs, CHUNK, BLOCK_D, BLOCK_N) recomputed states."""
    pid_b, pid_g, pid_blk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_c < d // g
    chan = pid_b.to(tl.int64) * d + pid_g * (d // g) + offs_c
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    state = chan[:, None] * n + offs_n[None, :]
    bc = (pid_b.to(tl.int64) * g + pid_g) * n * l + offs_n * l
    u_row, delta_row, z_row = u_ptr + chan * l, delta_ptr + chan * l, z_ptr + chan * l
    B_col, C_col, reset_row = B_ptr + bc, C_ptr + bc, reset_ptr + pid_b.to(tl.int64) * l
    dout_row, du_row, ddelta_row, dz_row = dout_ptr + chan * l, du_ptr + chan * l, ddelta_ptr + chan * l, dz_ptr + chan * l
    dB_col, dC_col = dB_ptr + bc, dC_ptr + bc
    program = (pid_b.to(tl.int64) * g + pid_g) * n_blocks + pid_blk
    scratch = scratch_ptr + program * (CHUNK * BLOCK_D * BLOCK_N) + \
        tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]   # (BLOCK_D, BLOCK_N) of step 0
    A = tl.load(A_ptr + (chan % d)[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0).to(ACC)
    Dv = tl.load(D_ptr + chan % d, mask=mask_d, other=0.0).to(ACC) if HAS_D else 0.0
    bias = tl.load(bias_ptr + chan % d, mask=mask_d, other=0.0).to(ACC) if HAS_BIAS else 0.0
    if HAS_DLAST:
        nu = tl.load(dlast_ptr + state, mask=mask_dn, other=0.0).to(ACC)   # ∂L/∂h_{l-1} from outside
    else:
        nu = tl.zeros((BLOCK_D, BLOCK_N), ACC)
    dA = tl.zeros((BLOCK_D, BLOCK_N), ACC)
    dD = tl.zeros((BLOCK_D,), ACC)
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        start = k * CHUNK
        end = tl.minimum(start + CHUNK, l)
        h = tl.load(ckpt_ptr + (chan * n_chunks + k)[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0)
        tl.debug_barrier()                                            # previous chunk's reads done
        for t in range(start, end):                                   # recompute the chunk's h_t
            u, delta, _, Bt, Ct, keep = _step_inputs(
                t, u_row, delta_row, B_col, C_col, reset_row, mask_d, mask_n, bias,
                HAS_BIAS, SOFTPLUS, HAS_RESET, ACC)
            h = tl.exp(delta[:, None] * A) * keep * h + (delta * u)[:, None] * Bt[None, :]
            tl.store(scratch + (t - start) * (BLOCK_D * BLOCK_N), h)
        tl.debug_barrier()                                            # scratch written before read
        for tt in range(0, end - start):
            t = end - 1 - tt
            u, delta, ddelta_dlin, Bt, Ct, keep = _step_inputs(
                t, u_row, delta_row, B_col, C_col, reset_row, mask_d, mask_n, bias,
                HAS_BIAS, SOFTPLUS, HAS_RESET, ACC)
            h = tl.load(scratch + (t - start) * (BLOCK_D * BLOCK_N))
            a = tl.exp(delta[:, None] * A) * keep                     # Ā_t
            bu = (delta * u)[:, None] * Bt[None, :]                   # B̄_t u_t
            ds = tl.load(dout_row + t, mask=mask_d, other=0.0).to(ACC)
            if HAS_Z:
                zt = tl.load(z_row + t, mask=mask_d, other=0.0).to(ACC)
                sig = 1.0 / (1.0 + tl.exp(-zt))
                s = row_sum(h * Ct[None, :], axis=1) + Dv * u          # y before the gate
                tl.store(dz_row + t, ds * s * sig * (1.0 + zt * (1.0 - sig)), mask=mask_d)
                ds *= zt * sig
            lam = ds[:, None] * Ct[None, :] + nu                      # λ_t
            lam_B = row_sum(lam * Bt[None, :], axis=1)                 # Σ_n λ B_t
            lam_ha = lam * (h - bu)                                   # λ_t Ā_t h_{t-1}
            dA += delta[:, None] * lam_ha
            dD += ds * u
            tl.store(du_row + t, ds * Dv + delta * lam_B, mask=mask_d)
            tl.store(ddelta_row + t, (lam_B * u + row_sum(lam_ha * A, axis=1)) * ddelta_dlin, mask=mask_d)
            tl.atomic_add(dB_col + t, row_sum(lam * (delta * u)[:, None], axis=0), mask=mask_n)
            tl.atomic_add(dC_col + t, row_sum(ds[:, None] * h, axis=0), mask=mask_n)
            nu = a * lam                                              # ν_t
    tl.store(dA_ptr + state, dA, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + chan, dD, mask=mask_d)
    tl.store(dh0_ptr + state, nu, mask=mask_dn)
