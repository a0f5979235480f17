"""`mambakit demo`: Mamba vs Transformer vs GRU of equal size on the embedded corpus, side by side."""
from __future__ import annotations

import argparse
import sys

from mambakit.cli.common import emit_json, non_negative_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train Mamba, Transformer and GRU of equal size and compare them",
                       description="Train equal-parameter models on the same bytes of stdlib source and "
                                   "token budget, then print val bits/byte, training tokens/s, decode "
                                   "latency at short and long context, peak memory and a sample from "
                                   "each; plots and results.json go to --out.")
    p.add_argument("--models", default="mamba,transformer,gru", help="comma-separated registry names")
    p.add_argument("--quick", action="store_true", help="about a minute in all: fewer, shorter steps")
    p.add_argument("--steps", type=positive_int, help="optimizer steps per model")
    p.add_argument("--time-budget", type=non_negative_float, help="training seconds per model at most")
    p.add_argument("--budget-params", type=positive_int, help="parameters per model")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mambakit.demo import CompareConfig, compare

    overrides = {k: v for k, v in dict(steps=args.steps, time_budget_s=args.time_budget,
                                       budget_params=args.budget_params).items() if v is not None}
    overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    overrides["progress"] = not (args.no_progress or args.json)
    cfg = CompareConfig.quick(**overrides) if args.quick else CompareConfig(**overrides)

    def announce(name: str, params: int) -> None:
        if not args.json:
            print(f"training {name} ({params:,} params) ...", file=sys.stderr)
    reports = compare(cfg, args.out, on_model=announce)
    if args.json:
        emit_json([{k: v for k, v in asdict(r).items() if k != "history"} for r in reports])
        return 0
    short, long = min(cfg.contexts), max(cfg.contexts)
    ms = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [("model", "params", "steps", "val bits/byte", "train tok/s", f"ms/tok @{short}",
             f"ms/tok @{long}", "peak MB")]
    rows += [(r.name, f"{r.parameters:,}", str(r.steps), f"{r.val['bits_per_byte']:.3f}",
              f"{r.train_tokens_per_s:,.0f}", ms(r.decode_ms[short]), ms(r.decode_ms[long]),
              f"{r.peak_memory_mb:,.0f}") for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))
    for r in reports:
        print(f"\n--- {r.name} sample ---\n{r.sample}")
    print(f"\nplots: {args.out}/loss_curves.png, {args.out}/latency_vs_context.png; "
          f"results: {args.out}/results.json; models: {args.out}/<name>/")
    return 0
