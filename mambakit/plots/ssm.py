"""Pictures of the SSM lineage: the HiPPO-LegS matrix, a layer's convolution kernel, and a signal
rebuilt from HiPPO states of growing size.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot global state, no display) and
written atomically as PNG. Each function returns the path it wrote.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mambakit.io.atomic import atomic_write
from mambakit.ops.hippo import hippo_legs, reconstruction_demo


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return Path(path)


def plot_hippo(path: str | os.PathLike, N: int = 32) -> Path:
    """Heatmap of HiPPO-LegS A (lower triangular: each coefficient is driven by the lower-order
    ones) next to B."""
    A, B = hippo_legs(N)
    fig = Figure(figsize=(7.5, 4.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [5, 2]})
    lim = float(A.abs().max())
    im = ax.imshow(A.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"HiPPO-LegS A (N={N})")
    ax.set_xlabel("k")
    ax.set_ylabel("n")
    fig.colorbar(im, ax=ax, fraction=0.046)
    bx.barh(range(N), B.numpy(), color="tab:red", height=0.8)
    bx.set_ylim(N - 0.5, -0.5)                                          # rows line up with A's
    bx.set_title("B = √(2n+1)")
    return _save(fig, path)


@torch.no_grad()
def plot_kernel(path: str | os.PathLike, mixers: Optional[dict[str, torch.nn.Module]] = None,
                length: int = 256, channels: int = 4) -> Path:
    """The convolution kernels K (a few channels) of LTI layers: {title: S4Mixer/S4DMixer}.
    Default: a freshly initialised S4 and S4D-Lin layer (HiPPO and S4D-Lin timescales)."""
    if mixers is None:
        from mambakit.modules.s4 import S4DMixer, S4Mixer

        torch.manual_seed(0)
        mixers = {"S4 (HiPPO-LegS, DPLR)": S4Mixer(channels, 64, 1e-2, 1e-1),
                  "S4D-Lin (diagonal)": S4DMixer(channels, 64, 1e-2, 1e-1, init="lin")}
    fig = Figure(figsize=(9, 3.2 * len(mixers)))
    axes = fig.subplots(len(mixers), 1, squeeze=False)[:, 0]
    for ax, (title, mixer) in zip(axes, mixers.items()):
        K = mixer.kernel(length)[:channels].float()                     # (channels, l)
        dt = mixer.dt[:channels]
        for c in range(K.shape[0]):
            ax.plot(K[c].numpy(), lw=1.2, label=f"channel {c} (Δ={dt[c].item():.3f})")
        ax.axhline(0, color="0.7", lw=0.6)
        ax.set_title(f"SSM convolution kernel K = (CB̅, CA̅B̅, …) — {title}")
        ax.set_xlabel("lag k")
        ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_reconstruction(path: str | os.PathLike, sizes: Sequence[int] = (4, 8, 16, 32), length: int = 400) -> Path:
    """A smooth signal, compressed into HiPPO-LegS states of size N, rebuilt from the state alone."""
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    f = torch.sin(6 * t) + 0.5 * torch.cos(15 * t ** 2) + 0.3 * torch.sign(torch.sin(9 * t))
    results = reconstruction_demo(f, tuple(sizes))
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    ax.plot(t.numpy(), f.numpy(), color="black", lw=2.2, label="input f")
    for N, (rec, err) in results.items():
        ax.plot(t.numpy(), rec.numpy(), lw=1.1, label=f"N={N}: RMS error {err:.3f}")
    ax.set_title("HiPPO-LegS: the whole history rebuilt from the final state")
    ax.set_xlabel("time (fraction of the sequence)")
    ax.legend(fontsize=8)
    return _save(fig, path)
