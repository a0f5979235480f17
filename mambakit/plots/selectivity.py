"""Selectivity of a trained Mamba: Δ, B and C as functions of the input, over a real sequence.

This is the picture that separates Mamba from S4: an LTI SSM's Δ/B/C are constants, while
s_Δ, s_B, s_C (Linear(x)) change token by token — a large Δ lets the current token overwrite
the state, a small Δ keeps it (Mamba paper §3.5.2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from mambakit.plots.ssm import _save


@torch.no_grad()
def selectivity(model, input_ids: torch.Tensor, layer: int = 0) -> dict[str, torch.Tensor]:
    """Run `model` (a MambaLM) on (1, l) ids; return layer `layer`'s Δ (l, d_in) after softplus,
    B (l, n) and C (l, n), read from its x_proj with a forward hook."""
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    mixer = getattr(layers[layer], "mixer", None) if layers is not None and layer < len(layers) else None
    if mixer is None or not hasattr(mixer, "x_proj"):
        raise ValueError(f"{type(model).__name__} has no selective layer {layer}: selectivity is "
                         f"drawn for Mamba models (layers 0..{len(layers or []) - 1})")
    captured = {}
    handle = mixer.x_proj.register_forward_hook(lambda mod, args, out: captured.update(x_dbl=out))
    # The fused CPU mixer (ops.mamba_inner) applies x_proj's weight directly; the unfused ops,
    # which the reference scan backend runs, call the module and so the hook.
    backend, mixer.scan_backend = mixer.scan_backend, "ref"
    try:
        model.eval()(input_ids)
    finally:
        handle.remove()
        mixer.scan_backend = backend
    dt, B, C = captured["x_dbl"][0].split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(F.linear(dt, mixer.dt_proj.weight, mixer.dt_proj.bias))  # (l, d_in)
    return {"delta": delta, "B": B, "C": C}


def plot_selectivity(path: str | os.PathLike, model, input_ids: torch.Tensor,
                     labels: Sequence[str], layer: int = 0) -> Path:
    """Three stacked panels over the sequence: mean Δ per token (with the channel spread), and
    heatmaps of B and C (state index × token)."""
    sel = selectivity(model, input_ids, layer)
    delta, B, C = (sel[k].float().cpu() for k in ("delta", "B", "C"))
    l = delta.shape[0]
    fig = Figure(figsize=(max(6.0, 0.22 * l), 7.0))
    ax, bx, cx = fig.subplots(3, 1, sharex=True)
    steps = torch.arange(l)
    ax.fill_between(steps, delta.quantile(0.1, dim=1), delta.quantile(0.9, dim=1), alpha=0.3,
                    label="10-90% of channels")
    ax.plot(steps, delta.mean(1), color="tab:blue", label="mean Δ")
    ax.set_yscale("log")
    ax.set_title(f"{type(model).__name__} layer {layer}: selective Δ, B, C over the input")
    ax.legend(loc="upper right", fontsize=8)
    for axis, X, name in ((bx, B, "B"), (cx, C, "C")):
        lim = float(X.abs().max()) or 1.0
        axis.imshow(X.T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axis.set_ylabel(f"{name}: state n")
    cx.set_xticks(range(l))
    cx.set_xticklabels(labels, fontsize=7, family="monospace")
    return _save(fig, path)
