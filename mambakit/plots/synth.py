"""Pictures of synthetic-task runs: per-run report, accuracy vs test length (the Mamba paper's
induction-heads figure), Table 1 beside the paper, and Zoology's MQAR accuracy vs width."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the display-free backend)

from mambakit.plots.training import _save  # noqa: E402


def _accuracy_lines(ax, results: Sequence[dict]) -> None:
    for r in results:
        points = [(e["seq_len"], e["token_accuracy"]) for e in r["eval"] if e["applicable"]]
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", label=r["model"])
    first = results[0]
    ax.axvline(first["config"]["seq_len"], color="gray", ls="--", lw=1, label="training length")
    ax.axhline(first["chance"], color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test sequence length", ylabel="token accuracy", ylim=(-0.02, 1.02),
           title=f"{first['task']}: accuracy vs length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_synth_runs(results: Sequence[dict], path: str | os.PathLike) -> None:
    """Training loss per step (left) and accuracy against test length, log scale (right), one line
    per run (the items `run_synth` returns)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ax_loss.plot(range(1, len(r["losses"]) + 1), r["losses"], lw=0.8, label=r["model"])
    ax_loss.set(xlabel="step", ylabel="train loss (nats)", title="training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    _accuracy_lines(ax_acc, results)
    _save(fig, path)


def plot_accuracy_vs_length(results: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy against test length alone (the paper's figure): for reports kept without their
    per-step losses, e.g. experiments/results/."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _accuracy_lines(ax, results)
    _save(fig, path)


def plot_table1(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy per Table 1 row, ours (at each training length of the row) beside the paper's."""
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    stages = [stage["seq_len"] for stage in rows[0].get("stages", [])] if rows else []
    bars = [(f"mambakit, L={n}", [100 * (r["stages"][i]["accuracy"] or 0) for r in rows])
            for i, n in enumerate(stages)] or [("mambakit", [100 * (r["accuracy"] or 0) for r in rows])]
    bars.append(("Mamba paper (L=4096)", [r["paper"] for r in rows]))
    width = 0.8 / len(bars)
    for i, (label, heights) in enumerate(bars):
        ax.bar([x + (i - (len(bars) - 1) / 2) * width for x in xs], heights, width=width, label=label)
    ax.set_xticks(list(xs), [r["row"] for r in rows], fontsize=8)
    ax.set(ylabel="selective copying accuracy (%)", ylim=(0, 105), title="Table 1: architecture × inner layer")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_mqar_sweep(points: Sequence[dict], path: str | os.PathLike, warm_start: bool = False) -> None:
    """Zoology's figure 2: accuracy against model width, one panel per sequence length, one line
    per model. `points` items have model, seq_len, d_model, accuracy."""
    lengths = sorted({p["seq_len"] for p in points})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.6), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths):
        for model in dict.fromkeys(p["model"] for p in points):
            line = sorted((p["d_model"], p["accuracy"]) for p in points
                          if p["model"] == model and p["seq_len"] == length and p["accuracy"] is not None)
            if line:
                ax.plot(*zip(*line), marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="model width (d_model)", title=f"sequence length {length}", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=8)
    if warm_start:
        fig.suptitle("each length warm-started from the one before", fontsize=9)
    _save(fig, path)
