"""SSD's two matrix forms (Dao & Gu 2024, §6-7): the quadratic dual ("attention") form and the
chunked SSD algorithm. Same contract as `ssd_scan_ref` (see ssd.py for the glossary).

The quadratic form is plain PyTorch differentiated by autograd. The chunked form's core has a
hand-written backward (ssd_chunk_scan.py) that keeps only its inputs and the chunk states and
rebuilds the (Q × Q) blocks: autograd would keep O(b·h·l·Q) floats of them per layer.

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
from mambakit.ops.ssd_chunk_scan import ChunkScan, decay_mask


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


def _pad_positions(t: Tensor, pad: int) -> Tensor:
    """t (b, l, ...) with `pad` zero positions appended (no copy when there are none)."""
    return t if pad == 0 else F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                     D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                     dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                     dt_limit: tuple[float, float] = NO_LIMIT, initial_states: Optional[Tensor] = None,
                     return_final_states: bool = False, reset: Optional[Tensor] = None,
                     fused: bool = False):
    """The SSD algorithm: the dual form inside chunks of Q positions, the recurrence between them.

    1. intra-chunk outputs  Y_diag = (L ∘ C Bᵀ) Δx       matmuls over (Q × Q) blocks
    2. chunk states         S_k = Σ_s decay_to_end_s Δx_s B_sᵀ   matmuls
    3. state passing        H_k = Ā_chunk_k H_{k-1} + S_k   sequential over c = ⌈l/Q⌉ chunks
    4. outputs from states  Y_off = decay_in_t · C_t H_{k-1}   matmuls
    Steps 1-4 and their hand-written backward are in ssd_chunk_scan.py; here Δ is applied (and
    differentiated by autograd), the sequence padded to whole chunks, and D and the gate applied.
    `fused` runs steps 1-4's forward as one C++ pass (fp32 CPU tensors only; ssd_cpu.py decides).
    """
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    Q = min(chunk_size, l)
    c = -(-l // Q)
    pad = c * Q - l                       # zero-padding: Δ = 0 there, so Ā = 1 and no input
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)                  # (b, l, h)
    a = _pad_positions(dt * A.to(ct), pad)                                      # log Ā: (b, c·Q, h)
    xdt = _pad_positions(x.to(ct) * dt[..., None], pad)                         # Δ x: (b, c·Q, h, p)
    Bp, Cp = (_pad_positions(t.to(ct), pad) for t in (B, C))                    # (b, c·Q, g, n)
    # seg: packed-document index inside each chunk, counted from the chunk start.
    seg = None if reset is None else F.pad(reset.long(), (0, pad)).view(b, c, Q).cumsum(-1)  # (b, c, Q)
    h0 = None if initial_states is None else initial_states.to(ct)
    y, final = ChunkScan.apply(xdt, a, Bp, Cp, h0, seg, Q, fused)                    # (b, c·Q, h, p)
    y = skip_and_gate(y[:, :l], x, D, z).to(x.dtype)
    return (y, final) if return_final_states else y


register_ssd_backend(Backend("quadratic", ssd_scan_quadratic, lambda device: None,
                             "dual 'attention' form, O(l²) per head (any device)"))
register_ssd_backend(Backend("chunked", ssd_scan_chunked, lambda device: None,
                             "chunked SSD: matmuls within chunks, recurrence across (any device)"),
                     auto_for=("cpu", "cuda", "mps"))
