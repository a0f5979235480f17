"""Parallel (log-depth) selective scan in plain PyTorch: runs on any device torch supports.

The recurrence h_t = Ā_t h_{t-1} + B̄_t u_t is a scan over pairs (a_t, b_t) = (Ā_t, B̄_t u_t) with
the associative operator (Mamba paper §3.3; Blelloch 1990)

    (a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)

so h_t is the b-part of (a_0, b_0) ∘ … ∘ (a_t, b_t). Hillis-Steele doubling computes all prefixes
in log2(L) elementwise steps. The expanded (b, d, n) pairs exist only for one chunk of time at a
time: chunks are scanned in parallel inside and chained sequentially by their last state, so
memory is bounded by the chunk size rather than by L. Under autograd each chunk is recomputed in
the backward pass (activation checkpointing), so training memory stays O(b·d·n·l/chunk) for the
chained states plus one chunk's intermediates. `reset` sets a_t = 0 (state zeroed before step t).
It is the portable path, not the fast one on CPU (see scan_cpu.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mambakit.ops.scan import ScanBackend, register_backend

MAX_CHUNK = 128           # longest time chunk scanned at once
CHUNK_ELEMENTS = 1 << 22  # cap on b·d·chunk·n per chunk (16 MiB of fp32 per expanded tensor)


def prefix_scan(a: Tensor, bu: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of (a, bu) along dim -2 (time): returns (prod a_0..a_t, h_t from h_{-1}=0).

    a, bu: (..., l, n). Hillis-Steele: after the step with offset k every position holds the
    composition of the last 2k pairs; positions before the start compose with the identity (1, 0).
    """
    l = a.shape[-2]
    offset = 1
    while offset < l:
        a_prev = F.pad(a[..., :-offset, :], (0, 0, offset, 0), value=1.0)
        bu_prev = F.pad(bu[..., :-offset, :], (0, 0, offset, 0))
        bu = a * bu_prev + bu
        a = a * a_prev
        offset *= 2
    return a, bu


def _scan_chunk(dt5: Tensor, x5: Tensor, Bg: Tensor, Cg: Tensor, A5: Tensor, h: Tensor,
                keep: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One time chunk: dt5/x5 (b, g, d/g, c, 1), Bg/Cg (b, g, n, c), h (b, g, d/g, n) ->
    (y (b, g, d/g, c), state after the chunk)."""
    a = torch.exp(dt5 * A5)                                               # Ā: (b, g, d/g, c, n)
    if keep is not None:
        a = a * keep
    bu = dt5 * x5 * Bg.transpose(-1, -2)[:, :, None]                      # B̄ u
    a_cum, h_zero = prefix_scan(a, bu)
    hs = a_cum * h[..., None, :] + h_zero                                 # (b, g, d/g, c, n)
    return (hs * Cg.transpose(-1, -2)[:, :, None]).sum(-1), hs[..., -1, :]


def _chunk_length(b: int, d: int, l: int, n: int) -> int:
    return max(1, min(l, MAX_CHUNK, CHUNK_ELEMENTS // max(1, b * d * n)))


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False, initial_state=None, reset=None):
    """Same contract as `selective_scan_ref` (ops/scan.py); fp32 (fp64 for fp64 inputs)."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    b, d, l = u.shape
    n = A.shape[1]
    x, dt = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg = (B[:, None] if B.dim() == 3 else B).to(dtype)                    # (b, g, n, l)
    Cg = (C[:, None] if C.dim() == 3 else C).to(dtype)
    g = Bg.shape[1]
    # Channels split as (g, d/g) so one group's B/C broadcasts over its channels without a copy.
    x5, dt5 = x.view(b, g, d // g, l, 1), dt.view(b, g, d // g, l, 1)    # (b, g, d/g, l, 1)
    A5 = A.to(dtype).view(g, d // g, 1, n)                                 # (g, d/g, 1, n)
    keep = None if reset is None else (~reset.bool()).to(dtype).view(b, 1, 1, l, 1)
    h = (u.new_zeros(b, g, d // g, n, dtype=dtype) if initial_state is None
         else initial_state.to(dtype).view(b, g, d // g, n))               # (b, g, d/g, n)
    ys = []
    step = _chunk_length(b, d, l, n)
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state))
    for s in range(0, l, step):
        t = slice(s, min(l, s + step))
        args = (dt5[..., t, :], x5[..., t, :], Bg[..., t], Cg[..., t], A5, h,
                None if keep is None else keep[..., t, :])
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if recompute else _scan_chunk(*args)
        ys.append(y)                                                       # (b, g, d/g, c)
    y = torch.cat(ys, -1).view(b, d, l) if ys else x.new_zeros(b, d, 0)   # (b, d, l)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, h.reshape(b, d, n)) if return_last_state else y


register_backend(ScanBackend("parallel", selective_scan_parallel, lambda device: None,
                             "log-depth associative scan in PyTorch (any device)"),
                 auto_for=("cuda", "mps"))
