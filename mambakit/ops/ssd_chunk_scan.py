"""The chunked SSD algorithm's core (Dao & Gu 2024, §7) with a hand-written backward.

Works on what is left once Δ is applied (ssd_chunked.py does that with autograd): Δx, log Ā = ΔA,
B, C and the initial state, all padded to c chunks of Q positions. Glossary as in ssd.py, plus
Q chunk length, c number of chunks, hg = h/g heads per group.

Why a custom backward: autograd through the forward keeps every (Q × Q) block per head — the decay
L, L ∘ CBᵀ, their exponent — for every layer until the backward pass: O(b·h·l·Q) floats, which
for the 130M model at L=512 is more than the rest of the activations. This backward keeps only its
inputs and the chunk states H (b, c, h, p, n), and rebuilds the (Q × Q) blocks from them, one
layer at a time. The gradients are the forward's matmuls transposed, plus the derivative of the
decays, which all have the form exp(Σ a): d(cum) = (d value) · value, summed back through the
cumulative sum. Tests check it against the sequential reference (outputs, states, gradients) and
gradcheck it in fp64.

On the CPU (fp32) both directions also exist fused in C++ (csrc/ssd_chunk.cpp): chunk_scan_fwd_cpu
and chunk_scan_bwd_cpu (a thread's heads walked chunk by chunk forwards, one pass per (batch,
head) backwards); the PyTorch forward and chunk_scan_bwd_ref are
their twins, which tests compare.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.cpu_kernels import in_place_rows, library, ptr


def decay_mask(seg: Optional[Tensor], T: int, device) -> Tensor:
    """Causal mask (T, T), and-ed with 'same packed document' when seg (..., T) is given."""
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return mask if seg is None else mask & (seg[..., :, None] == seg[..., None, :])


def _decays(cum: Tensor, seg: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From cum (b, c, Q, g, hg) = within-chunk cumulative log Ā and seg (b, c, Q) (packed-document
    index counted from the chunk start, or None):
        L         exp(cum_t - cum_s), s ≤ t in one document    (b, c, g, hg, Q, Q)
        to_end    exp(cum_last - cum_s), s in the last document (b, c, Q, g, hg)
        into      exp(cum_t), t in the chunk's first document   (b, c, Q, g, hg)
        through   exp(cum_last) if the chunk has no reset      (b, c, g, hg)
    Within a chunk the difference of cumulative sums stays at fp32 rounding (Q is small), as in
    mamba_ssm's chunk kernels."""
    Q = cum.shape[2]
    cum_h = cum.permute(0, 1, 3, 4, 2).contiguous()                             # (b, c, g, hg, Q): L comes out contiguous
    seg_h = None if seg is None else seg[:, :, None, None, :]                   # (b, c, 1, 1, Q)
    L = (cum_h[..., :, None] - cum_h[..., None, :]).masked_fill(
        ~decay_mask(seg_h, Q, cum.device), -math.inf).exp()
    to_end, into, through = torch.exp(cum[:, :, -1:] - cum), cum.exp(), cum[:, :, -1].exp()
    if seg is not None:
        s = seg[..., None, None]                                                # (b, c, Q, 1, 1)
        to_end = to_end * (s == s[:, :, -1:])
        into = into * (s == 0)
        through = through * (s[:, :, -1] == 0)
    return L, to_end, into, through


def _heads_first(t: Tensor) -> Tensor:
    """(b, c, Q, g, hg, p) -> (b, c, g, hg, Q, p), contiguous: one copy, rather than one inside
    every batched matmul that reads it."""
    return t.permute(0, 1, 3, 4, 2, 5).contiguous()


class ChunkScan(torch.autograd.Function):
    """(Δx (b, cQ, h, p), log Ā (b, cQ, h), B, C (b, cQ, g, n), h0 (b, h, p, n) or None, seg, Q)
    -> (y (b, cQ, h, p) without the D skip and gate, final state (b, h, p, n))."""

    @staticmethod
    def forward(ctx, xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, h0: Optional[Tensor],
                seg: Optional[Tensor], Q: int, fused: bool = False):
        b, cq, h, p = xdt.shape
        g, n = B.shape[-2:]
        c, hg = cq // Q, h // g
        if fused:  # the C++ twin of steps 1-4 (csrc/ssd_chunk.cpp), and of the backward below
            y, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, keep_states=True)
            ctx.save_for_backward(xdt, a, B, C, H, None, None if seg is None else seg.view(b, c, Q))
            ctx.Q, ctx.has_h0, ctx.fused = Q, h0 is not None, True
            return y, final
        cum = a.view(b, c, Q, g, hg).cumsum(2)                                  # (b, c, Q, g, hg)
        seg = None if seg is None else seg.view(b, c, Q)
        L, to_end, into, through = _decays(cum, seg)
        Bc, Cc = (t.reshape(b, c, Q, g, n).transpose(2, 3) for t in (B, C))     # (b, c, g, Q, n)
        X = xdt.view(b, c, Q, g, hg, p)

        # 1. intra-chunk (dual) form: Y_diag = (L ∘ C Bᵀ) Δx, once per group for C Bᵀ.
        CB = Cc @ Bc.transpose(-1, -2)                                          # (b, c, g, Q, Q)
        Y = (L * CB[:, :, :, None]) @ _heads_first(X)                           # (b, c, g, hg, Q, p)
        # 2. each chunk's contribution to the state at its end, states kept transposed (n, hg·p)
        #    so all heads of a group share one matmul against B or C.
        Xw = (X * to_end[..., None]).view(b, c, Q, g, hg * p)
        S = Bc.transpose(-1, -2) @ Xw.transpose(2, 3)                           # (b, c, g, n, hg·p)
        # 3. carry the state across chunks: H[k+1] = through_k · H[k] + S[k], written in place;
        #    H[k] enters chunk k, H[c] is the final state.
        H = xdt.new_empty(b, c + 1, g, n, hg * p)
        H[:, 0] = 0 if h0 is None else h0.view(b, g, hg, p, n).permute(0, 1, 4, 2, 3).reshape(b, g, n, hg * p)
        decay = through.repeat_interleave(p, dim=-1)[:, :, :, None]             # (b, c, g, 1, hg·p)
        for k in range(c):
            torch.addcmul(S[:, k], decay[:, k], H[:, k], out=H[:, k + 1])
        state, H = H[:, c], H[:, :c]
        # 4. what the entering state adds to each position of its chunk.
        Y_off = (Cc @ H).view(b, c, g, Q, hg, p).transpose(2, 3) * into[..., None]  # (b, c, Q, g, hg, p)
        y = (Y.permute(0, 1, 4, 2, 3, 5) + Y_off).reshape(b, cq, h, p)
        # A copy, never a view of H: the caller may update its state in place.
        final = xdt.new_empty(b, g, hg, p, n).copy_(state.view(b, g, n, hg, p).permute(0, 1, 3, 4, 2))
        final = final.view(b, h, p, n)

        # Y_off is kept (as large as Δx) so the backward needs no second C·H matmul for d(into).
        ctx.save_for_backward(xdt, a, B, C, H, Y_off, seg)
        ctx.Q, ctx.has_h0, ctx.fused = Q, h0 is not None, False
        return y, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Optional[Tensor], dfinal: Optional[Tensor]):
        xdt, a, B, C, H, Y_off, seg = ctx.saved_tensors
        if ctx.fused:  # the fused forward's backward: one C++ pass per (batch, head)
            grads = chunk_scan_bwd_cpu(xdt, a, B, C, H, seg, dy, dfinal, ctx.Q, ctx.has_h0)
        else:
            grads = chunk_scan_bwd_ref(xdt, a, B, C, H, seg, dy, dfinal, ctx.Q, ctx.has_h0, Y_off)
        return (*grads, None, None, None)


def chunk_scan_bwd_ref(xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, H: Tensor, seg: Optional[Tensor],
                       dy: Optional[Tensor], dfinal: Optional[Tensor], Q: int, want_dh0: bool,
                       Y_off: Optional[Tensor] = None):
    """ChunkScan's backward in PyTorch ops (any device and dtype; the twin of chunk_scan_bwd_cpu).
    Y_off: the forward's outputs from the entering states, or None to rebuild them from H."""
    b, cq, h, p = xdt.shape
    g, n = B.shape[-2:]
    c, hg = cq // Q, h // g
    dy = torch.zeros_like(xdt) if dy is None else dy
    cum = a.view(b, c, Q, g, hg).cumsum(2)                                  # (b, c, Q, g, hg)
    L, to_end, into, through = _decays(cum, seg)
    Bc, Cc = (t.reshape(b, c, Q, g, n).transpose(2, 3) for t in (B, C))     # (b, c, g, Q, n)
    if Y_off is None:  # the fused forward keeps no Y_off: rebuild it from H (one matmul)
        Y_off = (Cc @ H).view(b, c, g, Q, hg, p).transpose(2, 3) * into[..., None]
    X = xdt.view(b, c, Q, g, hg, p)
    dY = dy.reshape(b, c, Q, g, hg, p)                                      # (autograd may hand a strided dy)

    # 4. Y_off = into ∘ (C H): gradients for C, into and (all chunks at once) H.
    dYi = (dY * into[..., None]).view(b, c, Q, g, hg * p).transpose(2, 3)   # (b, c, g, Q, hg·p)
    dH_out = Cc.transpose(-1, -2) @ dYi                                     # (b, c, g, n, hg·p)
    dC = dYi @ H.transpose(-1, -2)                                          # (b, c, g, Q, n)
    dcum = (dY * Y_off).sum(-1)                                             # d(into)·into: (b, c, Q, g, hg)

    # 3. the state recurrence, backwards: dH[k] = through_k · dH[k+1] + dH_out[k], and
    #    dS[k] = dH[k+1]; dH[c] is the final state's gradient, dH[0] the initial state's.
    dH = xdt.new_empty(b, c + 1, g, n, hg * p)
    dH[:, c] = 0 if dfinal is None else dfinal.view(b, g, hg, p, n).permute(0, 1, 4, 2, 3).reshape(b, g, n, hg * p)
    decay = through.repeat_interleave(p, dim=-1)[:, :, :, None]             # (b, c, g, 1, hg·p)
    for k in reversed(range(c)):
        torch.addcmul(dH_out[:, k], decay[:, k], dH[:, k + 1], out=dH[:, k])
    dS = dH[:, 1:]
    dthrough = (dS * H).sum(-2).view(b, c, g, hg, p).sum(-1) * through      # (b, c, g, hg)
    dh0 = dH[:, 0].view(b, g, n, hg, p).permute(0, 1, 3, 4, 2).reshape(b, h, p, n) if want_dh0 else None

    # 2. S = Bᵀ (to_end ∘ Δx): gradients for B, Δx and to_end.
    BdS = (Bc @ dS).transpose(2, 3).view(b, c, Q, g, hg, p)                # (b, c, Q, g, hg, p)
    Xw = (X * to_end[..., None]).view(b, c, Q, g, hg * p).transpose(2, 3)   # (b, c, g, Q, hg·p)
    dB = Xw @ dS.transpose(-1, -2)                                          # (b, c, g, Q, n)
    dX = BdS * to_end[..., None]                                            # (b, c, Q, g, hg, p)
    dto_end = (BdS * X).sum(-1) * to_end                                    # (b, c, Q, g, hg)

    # 1. Y_diag = M Δx with M = L ∘ C Bᵀ: gradients for Δx, C Bᵀ (then C, B) and L.
    CB = Cc @ Bc.transpose(-1, -2)                                          # (b, c, g, Q, Q)
    M = L * CB[:, :, :, None]                                               # (b, c, g, hg, Q, Q)
    dYd = _heads_first(dY)                                                  # (b, c, g, hg, Q, p)
    dM = dYd @ _heads_first(X).transpose(-1, -2)                            # (b, c, g, hg, Q, Q)
    dX = dX + (M.transpose(-1, -2) @ dYd).permute(0, 1, 4, 2, 3, 5)
    dCB = (dM * L).sum(3)                                                   # (b, c, g, Q, Q)
    dC = dC + dCB @ Bc
    dB = dB + dCB.transpose(-1, -2) @ Cc
    P = dM * M                                                              # d(cum_t - cum_s)
    dcum = dcum + (P.sum(-1) - P.sum(-2)).permute(0, 1, 4, 2, 3)

    # The decays' exponents: to_end = exp(cum_last - cum_s), through = exp(cum_last).
    dcum = dcum - dto_end
    dcum[:, :, -1] += dto_end.sum(2) + dthrough
    da = dcum.flip(2).cumsum(2).flip(2)                                     # back through the cumsum
    return (dX.reshape(b, cq, h, p), da.reshape(b, cq, h), dB.transpose(2, 3).reshape(b, cq, g, n),
            dC.transpose(2, 3).reshape(b, cq, g, n), dh0)


def chunk_scan_fwd_cpu(xdt: Optional[Tensor], a: Optional[Tensor], B: Tensor, C: Tensor,
                       h0: Optional[Tensor], seg: Optional[Tensor], Q: int, keep_states: bool = False,
                       threads: Optional[int] = None, lib=None, *, x: Optional[Tensor] = None,
                       dt: Optional[Tensor] = None, A: Optional[Tensor] = None,
                       dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                       dt_limit: tuple[float, float] = (-math.inf, math.inf), D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """ChunkScan's forward (steps 1-4) in one C++ pass over the chunks: csrc/ssd_chunk.cpp.

    xdt (b, l, h, p), a (b, l, h), B/C (b, l, g, n), h0 (b, h, p, n) or None, all fp32 on the CPU;
    seg (b, ⌈l/Q⌉, Q) integer or None (positions past l ignored). l need not be a multiple of Q:
    the last chunk is just shorter. Returns (y (b, l, h, p), final (b, h, p, n), H) with H
    (b, c, g, n, hg·p) the states entering each chunk when `keep_states` (what the backward
    reads), else None.

    Prefill's fused form: xdt=None, a=None and x (b, l, h, p), dt (b, l, h), A (h,) instead: the
    kernel makes Δ = clamp(softplus?(dt + dt_bias), *dt_limit), log Ā = Δ A and Δx itself, and with
    D (h,) or (h, p) and z (b, l, h, p) y includes the D skip and the SiLU(z) gate, as
    skip_and_gate. x, z, dt, B and C may be row-strided views (of in_proj's or the conv's output).

    Every shape is checked here: the kernel trusts them. `lib`: a library from
    cpu_kernels.build_for (tests of the AVX2 / scalar builds); default the native one.
    """
    first = x if xdt is None else xdt
    if (xdt is None) == (x is None) or first.dim() != 4:
        raise ValueError("chunk_scan_fwd_cpu: pass either xdt or x (and dt), a (b, l, h, p) tensor")
    b, l, h, p = first.shape
    if B.dim() != 4:
        raise ValueError(f"chunk_scan_fwd_cpu: B must be (b, l, g, n), got {tuple(B.shape)}")
    g, n = B.shape[-2:]
    if isinstance(Q, bool) or not isinstance(Q, int) or Q < 1 or l < 1 or g < 1 or h % g:
        raise ValueError(f"chunk_scan_fwd_cpu: need Q >= 1, l >= 1 and g | h, got Q={Q!r}, l={l}, g={g}, h={h}")
    if x is not None and (dt is None or A is None or a is not None):
        raise ValueError("chunk_scan_fwd_cpu: x goes with dt and A (not a)")
    if xdt is not None and (a is None or any(t is not None for t in (dt, A, dt_bias, D, z))):
        raise ValueError("chunk_scan_fwd_cpu: xdt goes with a (not dt, A, dt_bias, D or z)")
    c = -(-l // Q)
    want = {"xdt": (xdt, (b, l, h, p)), "x": (x, (b, l, h, p)), "a": (a, (b, l, h)),
            "B": (B, (b, l, g, n)), "C": (C, (b, l, g, n)), "h0": (h0, (b, h, p, n)),
            "seg": (seg, (b, c, Q)), "dt": (dt, (b, l, h)), "A": (A, (h,)), "dt_bias": (dt_bias, (h,)),
            "D": (D, (h,) if D is None or D.dim() == 1 else (h, p)), "z": (z, (b, l, h, p))}
    for name, (t, shape) in want.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"chunk_scan_fwd_cpu: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t.device.type != "cpu":
            raise ValueError(f"chunk_scan_fwd_cpu: {name} is on {t.device}; the kernel runs on the CPU")
        if name != "seg" and t.dtype != torch.float32:
            raise ValueError(f"chunk_scan_fwd_cpu: {name} must be float32, got {t.dtype}")
    lib = library() if lib is None else lib
    if lib is None:
        raise RuntimeError("chunk_scan_fwd_cpu: the compiled kernels are not available")
    xdt = None if xdt is None else xdt.contiguous()
    # x, z, B, C and dt in place when each position's channels are contiguous at one position stride
    x, z, B, C, dt = (None if t is None else in_place_rows(t, 2, one_stride=True)
                      for t in (x, z, B, C, dt))
    if C.stride(1) != B.stride(1):
        B, C = B.contiguous(), C.contiguous()
    a, h0, A, dt_bias, D = (None if t is None else t.contiguous() for t in (a, h0, A, dt_bias, D))
    seg = None if seg is None else seg.to(torch.int64).contiguous()
    # C·Bᵀ per chunk and group: a batched GEMM (the BLAS's job), shared by the group's heads.
    pad = c * Q - l
    Bp, Cp = ((t if pad == 0 else torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad))).view(b, c, Q, g, n)
              for t in (B, C))
    CB = (Cp.transpose(2, 3) @ Bp.permute(0, 1, 3, 4, 2)).contiguous()        # (b, c, g, Q, Q)
    y = B.new_empty(b, l, h, p)
    final = B.new_empty(b, h, p, n)
    H = B.new_empty(b, c, g, n, (h // g) * p) if keep_states else None
    lo, hi = (float(v) for v in dt_limit)
    lib.mk_ssd_chunk_fwd_f32(ptr(xdt), ptr(a), ptr(B), ptr(C), ptr(CB), ptr(h0), ptr(seg), ptr(y),
                             ptr(final), ptr(H), b, l, h, p, g, n, Q, B.stride(1),
                             ptr(x), 0 if x is None else x.stride(1), ptr(dt), 0 if dt is None else dt.stride(1),
                             ptr(dt_bias), int(dt_softplus), lo, hi, ptr(A), ptr(D),
                             int(D is not None and D.dim() == 2), ptr(z), 0 if z is None else z.stride(1),
                             torch.get_num_threads() if threads is None else threads)
    return y, final, H


def chunk_scan_bwd_cpu(xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, H: Tensor, seg: Optional[Tensor],
                       dy: Optional[Tensor], dfinal: Optional[Tensor], Q: int, want_dh0: bool,
                       threads: Optional[int] = None, lib=None):
    """ChunkScan's backward in one C++ pass per (batch, head), walking the chunks backwards
    (csrc/ssd_chunk.cpp, mk_ssd_chunk_bwd_f32); the PyTorch backward above is its twin.

    xdt (b, cQ, h, p), a (b, cQ, h), B/C (b, cQ, g, n): ChunkScan's padded inputs; H (b, c, g, n,
    hg·p) the chunk states the fused forward kept; seg (b, c, Q) or None; dy (b, cQ, h, p) and
    dfinal (b, h, p, n), each None for no gradient. Returns (dxdt, da, dB, dC, dh0 or None).
    The kernel leaves dB, dC and d(C·Bᵀ) per head; here they are summed over each group's heads
    and d(C·Bᵀ) is turned into B and C gradients by two batched GEMMs (the BLAS's job).
    """
    b, cq, h, p = xdt.shape
    g, n = B.shape[-2:]
    if Q < 1 or cq % Q or h % g:
        raise ValueError(f"chunk_scan_bwd_cpu: need whole chunks and g | h, got l={cq}, Q={Q}, h={h}, g={g}")
    c, hg = cq // Q, h // g
    want = {"xdt": (xdt, (b, cq, h, p)), "a": (a, (b, cq, h)), "B": (B, (b, cq, g, n)), "C": (C, (b, cq, g, n)),
            "H": (H, (b, c, g, n, hg * p)), "seg": (seg, (b, c, Q)), "dy": (dy, (b, cq, h, p)),
            "dfinal": (dfinal, (b, h, p, n))}
    for name, (t, shape) in want.items():
        if t is None:
            continue
        if tuple(t.shape) != shape or t.device.type != "cpu":
            raise ValueError(f"chunk_scan_bwd_cpu: {name} must be a CPU tensor of shape {shape}, got "
                             f"{tuple(t.shape)} on {t.device}")
        if name != "seg" and t.dtype != torch.float32:
            raise ValueError(f"chunk_scan_bwd_cpu: {name} must be float32, got {t.dtype}")
    lib = library() if lib is None else lib
    if lib is None:
        raise RuntimeError("chunk_scan_bwd_cpu: the compiled kernels are not available")
    xdt, a, B, C, H = (t.contiguous() for t in (xdt, a, B, C, H))
    dy = torch.zeros_like(xdt) if dy is None else dy.contiguous()
    dfinal = None if dfinal is None else dfinal.contiguous()
    seg = None if seg is None else seg.to(torch.int64).contiguous()
    Bc, Cc = (t.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4) for t in (B, C))    # (b, g, c, Q, n)
    CB = (Cc @ Bc.transpose(-1, -2)).transpose(1, 2).contiguous()               # (b, c, g, Q, Q)
    dx, da = torch.empty_like(xdt), torch.empty_like(a)
    dB_h, dC_h = (xdt.new_empty(b, h, cq, n) for _ in range(2))
    dCB_h = xdt.new_empty(b, h, c, Q, Q)
    dh0 = xdt.new_empty(b, h, p, n) if want_dh0 else None
    lib.mk_ssd_chunk_bwd_f32(ptr(xdt), ptr(a), ptr(B), ptr(C), ptr(CB), ptr(H), ptr(seg), ptr(dy), ptr(dfinal),
                             ptr(dx), ptr(da), ptr(dB_h), ptr(dC_h), ptr(dCB_h), ptr(dh0), b, cq, h, p, g, n, Q,
                             torch.get_num_threads() if threads is None else threads)
    dCB = dCB_h.view(b, g, hg, c, Q, Q).sum(2)                                   # (b, g, c, Q, Q)
    dB = dB_h.view(b, g, hg, cq, n).sum(2) + (dCB.transpose(-1, -2) @ Cc).view(b, g, cq, n)
    dC = dC_h.view(b, g, hg, cq, n).sum(2) + (dCB @ Bc).view(b, g, cq, n)
    return dx, da, dB.transpose(1, 2), dC.transpose(1, 2), dh0
