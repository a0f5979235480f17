"""SSD's two matrix forms (Dao & Gu 2024, §6-7): the quadratic dual ("attention") form and the
chunked SSD algorithm. Same contract as `ssd_scan_ref` (see ssd.py for the glossary).

Both are plain PyTorch, differentiated by autograd. The chunked form's backward is matmuls over
the same (chunk × chunk) blocks as its forward, already the shape a hand-written backward would
have; what autograd keeps for it is O(b·h·l·Q) for the decay blocks plus the chunk states.

Decay with packed documents: with seg = cumsum(reset), position s reaches position t (s ≤ t) only
when seg[s] == seg[t]; the carried initial state reaches t only while seg[t] == 0. Masking the decay
matrix with that (instead of adding -inf to the log-decays) keeps every exponent finite and exact.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.ssd import (
    NO_LIMIT,
    Backend,
    compute_dtype,
    discretize_dt,
    expand_groups,
    register_ssd_backend,
    skip_and_gate,
)


def segsum(a: Tensor) -> Tensor:
    """a (..., T) -> S (..., T, T) with S[t, s] = Σ_{s<r≤t} a_r for s ≤ t (else unspecified).

    Summed as a cumulative sum of a masked matrix rather than cum[t] - cum[s]: no difference of two
    large partial sums, so the exponent stays exact however long the sequence (mamba_ssm's
    ssd_minimal does the same).
    """
    T = a.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    rep = a[..., :, None].expand(*a.shape, T).masked_fill(~strictly_lower, 0)   # [r, s] = a_r, r > s
    return rep.cumsum(dim=-2)                                                   # (..., T, T)


def decay_mask(seg: Optional[Tensor], T: int, device) -> Tensor:
    """Causal mask (T, T), and-ed with 'same packed document' when seg (..., T) is given."""
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return mask if seg is None else mask & (seg[..., :, None] == seg[..., None, :])


def ssd_scan_quadratic(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                       D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                       dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                       dt_limit: tuple[float, float] = NO_LIMIT, initial_states: Optional[Tensor] = None,
                       return_final_states: bool = False, reset: Optional[Tensor] = None):
    """The dual form: y = (L ∘ C Bᵀ)(Δ x) + (decayed initial state) C, one (l × l) matrix per head.
    O(l²) time and memory: the "attention" view, for checking and for short sequences."""
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)                  # (b, l, h)
    a = (dt * A.to(ct)).transpose(1, 2)                                         # log Ā: (b, h, l)
    Bh, Ch = expand_groups(B.to(ct), h), expand_groups(C.to(ct), h)             # (b, l, h, n)
    xdt = x.to(ct) * dt[..., None]                                              # Δ x: (b, l, h, p)
    seg = None if reset is None else reset.long().cumsum(-1)[:, None]           # (b, 1, l)
    L = segsum(a).masked_fill(~decay_mask(seg, l, x.device), -math.inf).exp()   # (b, h, l, l)
    scores = torch.einsum("bthn,bshn->bhts", Ch, Bh) * L                        # (b, h, l, l)
    y = torch.einsum("bhts,bshp->bthp", scores, xdt)                            # (b, l, h, p)
    final = torch.einsum("bhs,bshp,bshn->bhpn", L[:, :, -1], xdt, Bh)           # (b, h, p, n)
    if initial_states is not None:
        h0 = initial_states.to(ct)
        into = a.cumsum(-1).exp()                                               # Π_{r≤t} Ā_r: (b, h, l)
        if seg is not None:
            into = into * (seg == 0)
        y = y + torch.einsum("bthn,bhpn->bthp", Ch, h0) * into.transpose(1, 2)[..., None]
        final = final + into[:, :, -1, None, None] * h0
    y = skip_and_gate(y, x, D, z).to(x.dtype)
    return (y, final) if return_final_states else y


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                     D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                     dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                     dt_limit: tuple[float, float] = NO_LIMIT, initial_states: Optional[Tensor] = None,
                     return_final_states: bool = False, reset: Optional[Tensor] = None):
    """The SSD algorithm: the dual form inside chunks of Q positions, the recurrence between them.

    1. intra-chunk outputs  Y_diag = (L ∘ C Bᵀ) Δx          (b, c, g, h/g, Q, p)   matmuls
    2. chunk states         S_k = Σ_s decay_to_end_s Δx_s B_sᵀ  (b, c, g, n, h/g·p)  matmuls
    3. state passing        H_k = Ā_chunk_k H_{k-1} + S_k      sequential over c = ⌈l/Q⌉ chunks
    4. outputs from states  Y_off = decay_in_t · C_t H_{k-1}   (b, c, Q, g, h/g, p)   matmuls
    Heads are grouped (g, h/g) so C Bᵀ is computed once per group, not once per head, and steps
    2 and 4 are one (n × Q)·(Q × h/g·p) matmul per chunk and group for all its heads.
    """
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    Q = min(chunk_size, l)
    c = -(-l // Q)
    pad = c * Q - l                       # zero-padding: Δ = 0 there, so Ā = 1 and no input
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)                  # (b, l, h)
    a = F.pad(dt * A.to(ct), (0, 0, 0, pad))                                    # log Ā: (b, c·Q, h)
    xdt = F.pad(x.to(ct) * dt[..., None], (0, 0, 0, 0, 0, pad))                 # Δ x: (b, c·Q, h, p)
    Bc = F.pad(B.to(ct), (0, 0, 0, 0, 0, pad)).view(b, c, Q, g, n).transpose(2, 3)  # (b, c, g, Q, n)
    Cc = F.pad(C.to(ct), (0, 0, 0, 0, 0, pad)).view(b, c, Q, g, n).transpose(2, 3)  # (b, c, g, Q, n)
    X = xdt.view(b, c, Q, g, h // g, p).permute(0, 1, 3, 4, 2, 5)              # (b, c, g, h/g, Q, p)
    a = a.view(b, c, Q, g, h // g).permute(0, 1, 3, 4, 2)                       # (b, c, g, h/g, Q)
    cum = a.cumsum(-1)                                                          # (b, c, g, h/g, Q)
    # seg: packed-document index inside each chunk, counted from the chunk start.
    seg = None if reset is None else \
        F.pad(reset.long(), (0, pad)).view(b, c, 1, 1, Q).cumsum(-1)            # (b, c, 1, 1, Q)

    # 1. Within a chunk the (Q × Q) decay is a difference of cumulative sums: Q is small, so
    #    cancellation stays at fp32 rounding (mamba_ssm's chunk kernels do the same).
    L = (cum[..., :, None] - cum[..., None, :]).masked_fill(
        ~decay_mask(seg, Q, x.device), -math.inf).exp()                        # (b, c, g, h/g, Q, Q)
    CB = Cc @ Bc.transpose(-1, -2)                                              # (b, c, g, Q, Q)
    Y = (L * CB[:, :, :, None]) @ X                                             # (b, c, g, h/g, Q, p)

    # Steps 2-4 keep positions in x's own order (b, c, Q, g, h/g·p) and the states transposed,
    # (n, h/g·p): then all heads of a group share one matmul against B or C, with no copies.
    hg = h // g
    cum_q = cum.permute(0, 1, 4, 2, 3)                                          # (b, c, Q, g, h/g)
    seg_q = None if seg is None else seg.view(b, c, Q, 1, 1)

    # 2. Each chunk's own contribution to the state at its end.
    to_end = torch.exp(cum_q[:, :, -1:] - cum_q)                                # (b, c, Q, g, h/g)
    if seg_q is not None:
        to_end = to_end * (seg_q == seg_q[:, :, -1:])
    Xd = (xdt.view(b, c, Q, g, hg, p) * to_end[..., None]).view(b, c, Q, g, hg * p)
    S = (Bc.transpose(-1, -2) @ Xd.transpose(2, 3)).view(b, c, g, n, hg, p)    # Sᵀ per chunk

    # 3. Carry the state across chunks; H[k] is the (transposed) state entering chunk k.
    chunk_decay = cum[..., -1].exp()                                            # (b, c, g, h/g)
    if seg is not None:
        chunk_decay = chunk_decay * (seg[..., -1] == 0)
    state = (x.new_zeros(b, g, n, hg, p, dtype=ct) if initial_states is None
             else initial_states.to(ct).view(b, g, hg, p, n).permute(0, 1, 4, 2, 3))  # (b, g, n, h/g, p)
    entering = []
    for k in range(c):
        entering.append(state)
        state = chunk_decay[:, k, :, None, :, None] * state + S[:, k]
    H = torch.stack(entering, dim=1).view(b, c, g, n, hg * p)                  # (b, c, g, n, h/g·p)

    # 4. What the entering state adds to each position of its chunk.
    decay_in = cum_q.exp() if seg_q is None else cum_q.exp() * (seg_q == 0)     # (b, c, Q, g, h/g)
    Y_off = (Cc @ H).view(b, c, g, Q, hg, p).transpose(2, 3) * decay_in[..., None]  # (b, c, Q, g, h/g, p)

    y = (Y.permute(0, 1, 4, 2, 3, 5) + Y_off).reshape(b, c * Q, h, p)[:, :l]     # (b, l, h, p)
    y = skip_and_gate(y, x, D, z).to(x.dtype)
    final = state.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
    return (y, final) if return_final_states else y


register_ssd_backend(Backend("quadratic", ssd_scan_quadratic, lambda device: None,
                             "dual 'attention' form, O(l²) per head (any device)"))
register_ssd_backend(Backend("chunked", ssd_scan_chunked, lambda device: None,
                             "chunked SSD: matmuls within chunks, recurrence across (any device)"),
                     auto_for=("cpu", "cuda", "mps"))
