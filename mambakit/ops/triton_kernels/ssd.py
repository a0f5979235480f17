"""Triton kernel of Mamba-2's chunked SSD forward; contract and glossary in ops/ssd.py, the same
four steps as ssd_chunked.py, fused so that no (Q × Q) block or chunk state ever reaches memory.

One program owns (batch b, head h, BLOCK_P channels of the head) and walks the chunks of Q
positions in order, carrying the state S (BLOCK_P, n) in registers:
    Y   = (L ∘ C Bᵀ)(Δx) + decay_in · C Sᵀ       L[t, s] = exp(cum_t - cum_s), s ≤ t, same document
    S  ← exp(cum_last) · S + (to_end · Δx)ᵀ B     to_end_s = exp(cum_last - cum_s)
with cum the within-chunk cumulative sum of Δ·A (Q small: the difference stays at fp32 rounding).
Positions past l load Δ = 0 (Ā = 1, no input), so a partial last chunk needs no special case.
"""
import triton
import triton.language as tl

from mambakit.ops.triton_kernels.common import inline_when_interpreted, row_sum, softplus


@inline_when_interpreted
@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b accumulated in fp32: operands in DOT — bf16/fp16 for bf16/fp16 inputs (tensor cores, as
    mamba_ssm's kernels); fp32 as three TF32 products (tensor cores, ~fp32 accuracy: plain "ieee"
    fp32 lowers to FMA loops that take minutes to compile at these tile sizes); fp64 exact."""
    if DOT == tl.bfloat16 or DOT == tl.float16:
        return tl.dot(a.to(DOT), b.to(DOT))
    elif DOT == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, reset_ptr, y_ptr, final_ptr,
    l, h, p, g, n, dt_min, dt_max,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    """x, z, y (b, l, h, p); dt (b, l, h); A, bias (h,); D (h,) or (h, p); B, C (b, l, g, n);
    h0, final (b, h, p, n); reset (b, l) uint8; all contiguous."""
    pid_b, pid_h, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_q = tl.arange(0, Q)
    mask_p, mask_n = offs_p < p, offs_n < n
    mask_pn = mask_p[:, None] & mask_n[None, :]
    group = pid_h // (h // g)
    A = tl.load(A_ptr + pid_h).to(ACC)
    bias = tl.load(bias_ptr + pid_h).to(ACC) if HAS_BIAS else 0.0
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + pid_h * p + offs_p, mask=mask_p, other=0.0).to(ACC)
        else:
            Dv = tl.load(D_ptr + pid_h).to(ACC)
    state = ((pid_b.to(tl.int64) * h + pid_h) * p + offs_p)[:, None] * n + offs_n[None, :]   # (BLOCK_P, BLOCK_N)
    if HAS_H0:
        S = tl.load(h0_ptr + state, mask=mask_pn, other=0.0).to(ACC)
    else:
        S = tl.zeros((BLOCK_P, BLOCK_N), ACC)
    causal = offs_q[:, None] >= offs_q[None, :]                       # (Q, Q): s ≤ t
    last = offs_q == Q - 1
    for k in range(0, tl.cdiv(l, Q)):
        t = k * Q + offs_q
        mask_t = t < l
        row = pid_b.to(tl.int64) * l + t                              # (Q,) rows of (b·l)
        delta = tl.load(dt_ptr + row * h + pid_h, mask=mask_t, other=0.0).to(ACC) + bias
        if SOFTPLUS:
            delta, _ = softplus(delta)
        if HAS_LIMIT:
            delta = tl.minimum(tl.maximum(delta, dt_min), dt_max)
        delta = tl.where(mask_t, delta, 0.0)                          # Δ = 0 past l
        cum = tl.cumsum(delta * A, axis=0)                            # Σ_{r≤t} log Ā_r: (Q,)
        cum_last = row_sum(tl.where(last, cum, 0.0), axis=0)
        xp = x_ptr + (row * h + pid_h)[:, None] * p + offs_p[None, :]
        mask_tp = mask_t[:, None] & mask_p[None, :]
        X = tl.load(xp, mask=mask_tp, other=0.0).to(ACC)              # (Q, BLOCK_P)
        bc = (row * g + group)[:, None] * n + offs_n[None, :]
        mask_tn = mask_t[:, None] & mask_n[None, :]
        Bt = tl.load(B_ptr + bc, mask=mask_tn, other=0.0).to(ACC)     # (Q, BLOCK_N)
        Ct = tl.load(C_ptr + bc, mask=mask_tn, other=0.0).to(ACC)
        reach = causal
        decay_in = tl.exp(cum)                                        # Π_{r≤t} Ā_r
        to_end = tl.exp(cum_last - cum)                               # Π_{s<r≤last} Ā_r
        chunk_decay = tl.exp(cum_last)
        if HAS_RESET:
            seg = tl.cumsum(tl.load(reset_ptr + row, mask=mask_t, other=0).to(tl.int32), axis=0)
            seg_last = tl.max(seg, axis=0)
            reach = reach & (seg[:, None] == seg[None, :])
            decay_in = tl.where(seg == 0, decay_in, 0.0)
            to_end = tl.where(seg == seg_last, to_end, 0.0)
            chunk_decay = tl.where(seg_last == 0, chunk_decay, 0.0)
        L = tl.exp(tl.where(reach, cum[:, None] - cum[None, :], float("-inf")))   # (Q, Q)
        Xdt = X * delta[:, None]
        CB = _dot(Ct, tl.trans(Bt), DOT)                              # (Q, Q)
        Y = _dot(L * CB, Xdt, DOT)                                    # (Q, BLOCK_P)
        Y += _dot(Ct, tl.trans(S), DOT) * decay_in[:, None]
        S = chunk_decay * S + _dot(tl.trans(Xdt * to_end[:, None]), Bt, DOT)
        if HAS_D:
            if D_PER_P:
                Y += Dv[None, :] * X
            else:
                Y += Dv * X
        if HAS_Z:
            zt = tl.load(z_ptr + (row * h + pid_h)[:, None] * p + offs_p[None, :], mask=mask_tp, other=0.0).to(ACC)
            Y *= zt / (1.0 + tl.exp(-zt))
        tl.store(y_ptr + (row * h + pid_h)[:, None] * p + offs_p[None, :], Y.to(y_ptr.dtype.element_ty), mask=mask_tp)
    tl.store(final_ptr + state, S, mask=mask_pn)
