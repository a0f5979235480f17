"""`mambakit synth`: the Mamba paper's synthetic tasks (thin layer over mambakit.tasks.run_synth)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambakit.cli.common import emit_json, finite_float, non_negative_float, positive_int, seed_int

# flag destination -> SynthConfig field; a flag left out keeps the SynthConfig default
FIELDS = {"model": "model", "d_model": "d_model", "n_layer": "n_layer", "budget_params": "budget_params",
          "vocab_size": "vocab_size", "num_tokens": "num_tokens", "seq_len": "seq_len", "steps": "steps",
          "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps", "weight_decay": "weight_decay",
          "eval_lengths": "eval_lengths", "eval_samples": "eval_samples", "seed": "seed", "device": "device"}


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="selective copying / induction heads: train, test, extrapolate",
                       description="Train a model on a synthetic task of the Mamba paper (fresh random "
                                   "batches every step), then measure its accuracy at the training "
                                   "length and at longer ones (length extrapolation).")
    p.add_argument("task", help="selective-copying or induction-heads")
    p.add_argument("--model", help="model family from the registry (default: mamba)")
    p.add_argument("--d-model", type=positive_int, help="model width (default: 64, as in the paper)")
    p.add_argument("--n-layer", type=positive_int, help="layers (default: 2, as in the paper)")
    p.add_argument("--budget-params", type=positive_int, help="size d_model to about this many parameters")
    p.add_argument("--model-field", action="append", default=[], metavar="KEY=VALUE",
                   help="another model config field, e.g. d_state=8 or positions=learned (repeatable)")
    p.add_argument("--vocab-size", type=positive_int, help="token ids, special ones included (default: 16)")
    p.add_argument("--num-tokens", type=positive_int, help="selective copying: data tokens (default: 4)")
    p.add_argument("--seq-len", type=positive_int, help="training length (default: 64)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (default: 2000)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step (default: 32)")
    p.add_argument("--lr", type=finite_float, help="peak learning rate (default: 3e-3)")
    p.add_argument("--warmup", type=int, help="warmup steps (default: 50)")
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay (default: 0)")
    p.add_argument("--eval-lengths", type=positive_int, nargs="*",
                   help="lengths tested besides --seq-len (default: 2x and 4x --seq-len; none: no value)")
    p.add_argument("--eval-samples", type=positive_int, help="held-out sequences per length (default: 256)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="folder to write <task>-<model>.json into")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_model_fields(items: list[str]) -> dict:
    """["d_state=8", "positions=learned"] -> {"d_state": 8, "positions": "learned"} (JSON values,
    else strings); the model config itself rejects unknown keys and bad values."""
    fields = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-field {item!r}: expected KEY=VALUE")
        try:
            fields[key] = json.loads(text)
        except json.JSONDecodeError:
            fields[key] = text
    return fields


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mambakit.io.atomic import atomic_write_text
    from mambakit.tasks import SynthConfig, run_synth

    given = {field: getattr(args, flag) for flag, field in FIELDS.items() if getattr(args, flag) is not None}
    cfg = SynthConfig(task=args.task, model_fields=parse_model_fields(args.model_field), **given)
    with tqdm(total=cfg.steps, desc=f"{cfg.task} {cfg.model}", unit="step",
              disable=args.no_progress or None) as bar:
        def on_progress(step: int, steps: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        result = run_synth(cfg, on_progress)
    if args.out:
        path = Path(args.out) / f"{cfg.task}-{cfg.model}.json"
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        result["written"] = str(path)
    if args.json:
        emit_json(result)
    else:
        print_table(result)
    return 0


def print_table(result: dict) -> None:
    """One row per model: parameters, final loss, then token accuracy at each evaluated length."""
    evals = result["eval"]
    headers = ["model", "params", "final loss"] + [f"acc@{e['seq_len']}" + (" (train)" if i == 0 else "")
                                                 for i, e in enumerate(evals)]
    row = [result["model"], f"{result['parameters']:,}", f"{result['final_loss']:.3f}"]
    row += [f"{e['token_accuracy']:.3f}" if e["applicable"] else "n/a" for e in evals]
    widths = [max(len(h), len(c)) for h, c in zip(headers, row)]
    print(f"{result['task']}: accuracy = scored tokens exactly right (chance {result['chance']:.3f})")
    for cells in (headers, row):
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    solved = ", ".join(f"{e['sequence_accuracy']:.3f}" if e["applicable"] else "n/a" for e in evals)
    print(f"sequences fully right: {solved}")
    for e in evals:
        if not e["applicable"]:
            print(f"length {e['seq_len']}: not applicable ({e['reason']})")
    if "written" in result:
        print(f"results written to {result['written']}")
