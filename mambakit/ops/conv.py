"""Causal depthwise conv1d (the Mamba block's short convolution) and its rolling decode state.

x: (b, d, l), weight: (d, k), bias: (d,). The conv state is the last k-1 inputs, (b, d, k-1):
enough to produce the next output from one new input, so decoding is O(1) per token.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.registry import Backend, BackendRegistry


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None,
                  reset: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Returns (y (b, d, l), final_state (b, d, k-1)). `initial_state` = inputs before x (zeros if None).

    `reset` (b, l) bool marks packed-document starts: taps reaching back across a start are dropped,
    exactly as if each document were convolved alone from a zero state.
    """
    b, d, l = x.shape
    k = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(b, d, k - 1)
    elif tuple(initial_state.shape) != (b, d, k - 1):
        raise ValueError(f"causal_conv1d: conv state must be {(b, d, k - 1)}, got {tuple(initial_state.shape)}")
    xp = torch.cat([initial_state.to(x.dtype), x], dim=-1)               # (b, d, k-1+l)
    if reset is not None:
        return _causal_conv1d_packed(xp, weight, bias, reset.bool()), xp[..., xp.shape[-1] - (k - 1):]
    y = F.conv1d(xp, weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=d)                                               # (b, d, l)
    return y, xp[..., xp.shape[-1] - (k - 1):]


def causal_conv1d_step_ref(x: Tensor, state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                           activation: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """The spec of one decode step: x (b, d), state (b, d, k-1) -> (y (b, d), new state (b, d, k-1))."""
    window = torch.cat([state.to(x.dtype), x[..., None]], dim=-1)       # (b, d, k)
    y = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return (F.silu(y) if activation == "silu" else y), window[..., 1:]


STEP_REGISTRY = BackendRegistry("causal_conv1d_step", Backend(
    "ref", causal_conv1d_step_ref, lambda device: None, "PyTorch reference (the spec)"))


def causal_conv1d_step(x: Tensor, state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                       activation: Optional[str] = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One decode step (causal_conv1d_update's maths with a (b, d, k-1) state that is not
    mutated): x (b, d), state (b, d, k-1), weight (d, k), bias (d,), activation None | "silu"
    -> (y (b, d), new state (b, d, k-1))."""
    def fail(msg: str):
        raise ValueError(f"causal_conv1d_step: {msg}")

    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        fail(f"x must be (b, d) and weight (d, k), got {tuple(x.shape)} and {tuple(weight.shape)}")
    b, d = x.shape
    k = weight.shape[1]
    if tuple(state.shape) != (b, d, k - 1):
        fail(f"state must have shape {(b, d, k - 1)}, got {tuple(state.shape)}")
    if bias is not None and tuple(bias.shape) != (d,):
        fail(f"bias must have shape {(d,)}, got {tuple(bias.shape)}")
    if activation not in (None, "silu"):
        fail(f"activation must be None or 'silu', got {activation!r}")
    impl = STEP_REGISTRY.resolve(backend, x.device)
    return impl.fn(x, state, weight, bias, activation=activation)


def _causal_conv1d_packed(xp: Tensor, weight: Tensor, bias: Optional[Tensor], reset: Tensor) -> Tensor:
    """Conv with document boundaries: tap s (looking s steps back) is used only if no document
    start lies in (t-s, t]. k is tiny (4), so a sum of k shifted products is cheap and exact."""
    k = weight.shape[-1]
    l = reset.shape[1]
    b = reset.shape[0]
    # since_start[t]: steps since the current document began (large before any reset: the
    # initial state belongs to the first document).
    idx = torch.arange(l, device=reset.device).expand(b, l)
    start = torch.where(reset, idx, torch.full_like(idx, -(k + l)))
    since_start = idx - torch.cummax(start, dim=1).values                # (b, l)
    y = torch.zeros_like(xp[..., k - 1:])
    for s in range(k):
        tap = xp[..., k - 1 - s: xp.shape[-1] - s]                        # x_{t-s}: (b, d, l)
        valid = (since_start >= s).to(xp.dtype)[:, None, :]
        y = y + tap * weight[:, k - 1 - s, None].to(xp.dtype) * valid
    if bias is not None:
        y = y + bias.to(xp.dtype)[:, None]
    return y
