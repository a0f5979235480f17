"""Training pictures: loss curves of several models, and decode latency against context length."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the display-free backend)

from mambakit.io.atomic import atomic_write  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def plot_loss_curves(reports: Sequence, path: str | os.PathLike) -> None:
    """Training loss (thin) and validation bits/byte (markers) against tokens seen, per model.
    `reports` items have .name and .history (records with step, tokens, loss, val)."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in reports:
        steps = [h for h in r.history if "loss" in h]
        ax_train.plot([h["tokens"] for h in steps], [h["loss"] for h in steps], lw=1, label=r.name)
        tokens_at = {h["step"]: h["tokens"] for h in steps}
        vals = [(tokens_at.get(h["step"], 0), h["val"]["bits_per_byte"]) for h in r.history if "val" in h]
        if vals:
            ax_val.plot(*zip(*vals), marker="o", label=r.name)
    ax_train.set(xlabel="training tokens", ylabel="train loss (nats/token)", title="training loss")
    ax_val.set(xlabel="training tokens", ylabel="val bits/byte", title="validation")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_latency_vs_context(reports: Sequence, path: str | os.PathLike) -> None:
    """Decode ms/token against context length: flat for recurrent state, growing for a KV cache.
    `reports` items have .name and .decode_ms {context: ms or None}."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reports:
        points = sorted((int(c), ms) for c, ms in r.decode_ms.items() if ms is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=r.name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="context length (tokens)", ylabel="decode ms / token", title="decode latency vs context")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
