"""`mambakit synth`: the papers' synthetic tasks and experiments (thin layer over mambakit.tasks).

    synth selective-copying | induction-heads | mqar   train + evaluate each --model, plot them
    synth table1                                        the Mamba paper's Table 1, beside its numbers
    synth mqar-sweep                                    Zoology's MQAR: models x widths x lengths
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mambakit.cli.common import emit_json, finite_float, non_negative_float, positive_int, seed_int

TASK_CHOICES = ("selective-copying", "induction-heads", "mqar", "table1", "mqar-sweep")
# flag destination -> SynthConfig field; a flag left out keeps the SynthConfig (or --paper) default
FIELDS = {"d_model": "d_model", "n_layer": "n_layer", "budget_params": "budget_params",
          "vocab_size": "vocab_size", "num_tokens": "num_tokens", "seq_len": "seq_len", "steps": "steps",
          "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_steps", "weight_decay": "weight_decay",
          "loss_on": "loss_on", "then": "then", "time_budget": "time_budget", "checkpoint_every": "checkpoint_every",
          "eval_lengths": "eval_lengths", "eval_samples": "eval_samples", "eval_batch_size": "eval_batch_size",
          "eval_chunk": "eval_chunk", "eval_max_tokens": "eval_max_tokens", "stop_at": "stop_at",
          "init_from": "init_from", "seed": "seed", "device": "device"}
# mqar-sweep's own defaults: Zoology's figure 2 tries learning rates per point and stops at 99%
SWEEP_LRS = [1e-3, 3e-3, 1e-2]
SWEEP_STOP_AT = 0.99


def stage_arg(text: str) -> tuple[int, int]:
    """"8192:200" -> (8192, 200): a training stage's length and steps."""
    length, sep, steps = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LENGTH:STEPS, got {text!r}")
    return positive_int(length), positive_int(steps)


def threads_arg(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="the papers' synthetic tasks: selective copying, induction heads, MQAR, Table 1",
                       description="Train models on a synthetic task of the Mamba / Zoology papers (fresh random "
                                   "batches every step), then measure accuracy at the training length and at "
                                   "longer ones. With --out every run writes a JSON + PNG report and checkpoints; "
                                   "the same command run again continues from the last checkpoint.")
    p.add_argument("task", metavar="TASK", help=" | ".join(TASK_CHOICES))
    p.add_argument("--model", nargs="+", help="registry model(s) (default: mamba; mqar-sweep: mamba transformer "
                                             "s4d gru mamba2); table1 fixes its own")
    p.add_argument("--recipe", choices=["paper", "cpu"],
                   help="a task's named settings (flags given override them); induction heads: paper = L=256, "
                        "batch 8, constant lr 1e-3, 50k steps; cpu = L=256 x 2000 steps then 8192 x 200 (about "
                        "20 minutes on 2 cores); both tested at 2^6..2^20")
    p.add_argument("--paper", action="store_true", help="same as --recipe paper")
    p.add_argument("--d-model", type=positive_int, help="model width (default: 64, as in the paper)")
    p.add_argument("--n-layer", type=positive_int, help="layers (default: 2, as in the paper)")
    p.add_argument("--budget-params", type=positive_int, help="size d_model to about this many parameters")
    p.add_argument("--model-field", action="append", default=[], metavar="KEY=VALUE",
                   help="another model config field, e.g. d_state=8 or positions=learned, or for one model of "
                        "several: transformer:n_head=4 (repeatable)")
    p.add_argument("--vocab-size", type=positive_int, help="token ids, special ones included (default: 16; mqar 64)")
    p.add_argument("--num-tokens", type=positive_int,
                   help="selective copying: data tokens (default: 16); mqar: key-value pairs (default: 4)")
    p.add_argument("--seq-len", type=positive_int,
                   help="training length (default: selective copying 128, induction heads 64, mqar 64)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (default: selective copying 6000, "
                                                      "induction heads 2000, mqar 2000; table1's no-gate rows "
                                                      "train twice --steps)")
    p.add_argument("--random-fillers", action="store_true",
                   help="mqar: random ids between the queries (Zoology's random_non_queries) instead of 0")
    p.add_argument("--stop-at", type=finite_float, metavar="ACCURACY",
                   help="stop training once a validation batch reaches this accuracy, e.g. 0.99 "
                        f"(default: none; mqar-sweep {SWEEP_STOP_AT}, as Zoology)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step (default: 32)")
    p.add_argument("--lr", type=finite_float, help="peak learning rate (default: 3e-3)")
    p.add_argument("--constant-lr", action="store_true", help="no cosine decay after warmup")
    p.add_argument("--warmup", type=int, help="warmup steps (default: 50)")
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay (default: 0)")
    p.add_argument("--loss-on", choices=["answers", "all"],
                   help="loss on the scored answers only (default) or on the next token everywhere")
    p.add_argument("--then", type=stage_arg, nargs="*", metavar="LENGTH:STEPS",
                   help="after --steps at --seq-len, train STEPS more at each longer LENGTH (batches of about "
                        "the same number of tokens), e.g. --then 2048:100 8192:200; --then alone: no stages "
                        "(drops a recipe's)")
    p.add_argument("--time-budget", type=finite_float, metavar="SECONDS",
                   help="stop each run's training after this long, then evaluate")
    p.add_argument("--init-from", metavar="DIR",
                   help="start from the latest weights of an earlier run of the same model: its checkpoint "
                        "folder, e.g. OUT/checkpoints/mqar-mamba (a curriculum)")
    p.add_argument("--warm-start", action="store_true",
                   help="mqar-sweep: start each length from the same model's best run at the length before, "
                        "at its learning rate (a curriculum for a CPU budget; Zoology trains every point from "
                        "scratch); needs --out")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default: 500)")
    p.add_argument("--eval-lengths", type=positive_int, nargs="*",
                   help="lengths tested besides --seq-len (default: 2x and 4x --seq-len; none: no value)")
    p.add_argument("--eval-samples", type=positive_int, help="held-out sequences per length (default: 256)")
    p.add_argument("--eval-batch-size", type=positive_int, help="sequences per evaluation batch (default: --batch-size)")
    p.add_argument("--eval-chunk", type=positive_int,
                   help="evaluate longer sequences this many tokens at a time, state carried (default: 8192)")
    p.add_argument("--eval-max-tokens", type=positive_int, help="cap on samples x length at each tested length")
    p.add_argument("--rows", nargs="+", metavar="MODEL",
                   help="table1: only these rows (s4 s6 mamba-s4d mamba); rows checkpoint under --out, so a "
                        "later full run picks finished ones up (e.g. two processes, two rows each)")
    p.add_argument("--continue-at", type=stage_arg, metavar="LENGTH:STEPS",
                   help="table1: after training at --seq-len, each row trains on at LENGTH for STEPS (x the "
                        "row's step factor) from its own weights and is scored there (default: 256:1500)")
    p.add_argument("--no-continue", action="store_true", help="table1: score each row at --seq-len")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[64, 128, 256], help="mqar-sweep widths")
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[64, 128, 256],
                   help="mqar-sweep lengths (default: figure 2's 64 128 256, with length/16 key-value pairs)")
    p.add_argument("--lrs", type=finite_float, nargs="+",
                   help=f"mqar-sweep: learning rates each point tries, the best reported (default: "
                        f"{' '.join(f'{lr:g}' for lr in SWEEP_LRS)}; --lr: that one alone)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="table1 / mqar-sweep: rows or points trained at once, one process each, sharing "
                        "--threads (tiny models use cores better as processes than as threads: 1.24x here)")
    p.add_argument("--threads", type=threads_arg, default="auto",
                   help="intra-op threads, or auto: 1 on a busy machine unless OMP_WAIT_POLICY=PASSIVE (default)")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="folder for reports (JSON + PNG) and checkpoints")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_model_fields(items: list[str]) -> tuple[dict, dict[str, dict]]:
    """["d_state=8", "transformer:n_head=4"] -> ({"d_state": 8}, {"transformer": {"n_head": 4}}):
    fields for every model, and fields for one model (MODEL:KEY=VALUE); JSON values, else strings.
    The model config itself rejects unknown keys and bad values."""
    shared, per_model = {}, {}
    for item in items:
        key, sep, text = item.partition("=")
        model, colon, name = key.rpartition(":")
        if not sep or not name or (colon and not model):
            raise ValueError(f"--model-field {item!r}: expected KEY=VALUE or MODEL:KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        (per_model.setdefault(model, {}) if colon else shared)[name] = value
    return shared, per_model


def fields_for(args: argparse.Namespace, models: list[str]) -> dict[str, dict]:
    """Each model's own --model-field MODEL:KEY=VALUE settings; a MODEL not in the run is an error."""
    per_model = parse_model_fields(args.model_field)[1]
    stray = sorted(set(per_model) - set(models))
    if stray:
        raise ValueError(f"--model-field names {stray}, which this run does not train (models: {models})")
    return per_model


def base_config(args: argparse.Namespace, task: str):
    from mambakit.tasks import SynthConfig

    given = {field: getattr(args, flag) for flag, field in FIELDS.items() if getattr(args, flag) is not None}
    if args.constant_lr:
        given["min_lr_ratio"] = 1.0
    if args.random_fillers:
        given["random_fillers"] = True
    if args.out:
        given["checkpoint_dir"] = str(Path(args.out) / "checkpoints")
    fields = parse_model_fields(args.model_field)[0]
    if args.paper and args.recipe not in (None, "paper"):
        raise ValueError(f"--paper is --recipe paper; it cannot be combined with --recipe {args.recipe}")
    recipe = "paper" if args.paper else args.recipe
    if recipe is not None:
        return SynthConfig.recipe(recipe, task, model_fields=fields, **given)
    return SynthConfig(task=task, model_fields=fields, **given)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from mambakit.threads import auto_threads

    threads = auto_threads() if args.threads == "auto" else args.threads
    torch.set_num_threads(threads)
    args.worker_threads = max(1, threads // args.jobs)

    def progress(name: str, total: int):
        bar = tqdm(total=total, desc=name, unit="step", disable=args.no_progress or None, leave=False)

        def on_progress(step: int, steps: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(0)
            if step == steps:
                bar.close()
        return on_progress

    out = Path(args.out) if args.out else None
    if args.rows and args.task != "table1":
        raise ValueError("--rows selects rows of table1 only")
    if (args.continue_at is not None or args.no_continue) and args.task != "table1":
        raise ValueError("--continue-at / --no-continue are table1's; for one run give --then")
    if args.warm_start and args.task != "mqar-sweep":
        raise ValueError("--warm-start chains the lengths of mqar-sweep; for one run give --init-from")
    if args.warm_start and out is None:
        raise ValueError("--warm-start starts each length from the last one's checkpoint: give --out")
    if args.jobs > 1 and args.task not in ("table1", "mqar-sweep"):
        raise ValueError("--jobs runs table1 rows or mqar-sweep points side by side; "
                         f"{args.task} trains its models one after another")
    if args.task == "table1":
        return _table1(args, out, progress)
    if args.task == "mqar-sweep":
        return _mqar_sweep(args, out, progress)
    return _runs(args, out, progress)


def finished(args, template: str):
    """With --jobs, where progress bars cannot follow the worker processes: a line per finished run."""
    if args.jobs == 1 or args.no_progress:
        return None
    return lambda what: print(f"{template.format(what)}: done", file=sys.stderr, flush=True)


def _report(out, name: str, result: dict) -> None:
    """<out>/<name>.json and .png: one run's numbers, loss curve and accuracy vs length."""
    from mambakit.io.atomic import atomic_write_text
    from mambakit.plots.synth import plot_synth_runs

    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
    plot_synth_runs([result], out / f"{name}.png")


def _runs(args, out, progress) -> int:
    from mambakit.plots.synth import plot_synth_runs
    from mambakit.tasks import run_synth

    base = base_config(args, args.task)
    models = args.model or [base.model]
    per_model = fields_for(args, models)
    if base.init_from is not None and len(models) > 1:
        raise ValueError("--init-from holds the weights of one model; train one --model with it")
    results = []
    for model in models:
        cfg = dataclasses.replace(base, model=model, model_fields={**base.model_fields, **per_model.get(model, {})},
                                  checkpoint_dir=None if out is None else
                                  str(out / "checkpoints" / f"{args.task}-{model}"))
        result = run_synth(cfg, progress(f"{cfg.task} {model}", cfg.total_steps))
        results.append(result)
        if out is not None:
            _report(out, f"{args.task}-{model}", result)
    if out is not None and len(results) > 1:
        plot_synth_runs(results, out / f"{args.task}.png")
    if args.json:
        emit_json(results[0] if len(results) == 1 else results)
        return 0
    print_runs(results)
    if out is not None:
        print(f"reports written to {out}")
    return 0


def _table1(args, out, progress) -> int:
    from mambakit.io.atomic import atomic_write_text
    from mambakit.plots.synth import plot_table1
    from mambakit.tasks.experiments import TABLE1_CONTINUE, TABLE1_ROWS, run_table1

    if args.model:
        raise ValueError("table1 fixes its rows' models; drop --model")
    base = base_config(args, "selective-copying")
    fields_for(args, [])                    # no per-model fields: table1's rows fix their models
    if args.no_continue and args.continue_at is not None:
        raise ValueError("give --continue-at or --no-continue, not both")
    continue_at = None if args.no_continue else args.continue_at or TABLE1_CONTINUE
    table = run_table1(base, lambda row, cfg: progress(f"table1 {row} L={cfg.seq_len}", cfg.total_steps),
                       models=args.rows, continue_at=continue_at, jobs=args.jobs, threads=args.worker_threads,
                       on_done=finished(args, "table1 row {}"))
    for r in table["rows"]:                 # each run's own report; the table keeps the last run's
        runs = r.pop("results")
        if out is not None:
            for run in runs[:-1]:
                _report(out, f"table1-{r['model']}-l{run['config']['seq_len']}", run)
            _report(out, f"table1-{r['model']}", r["result"])
    if out is not None:
        if len(table["rows"]) == len(TABLE1_ROWS):  # the table itself only once every row is in
            atomic_write_text(out / "table1.json", json.dumps(table, indent=2) + "\n")
            plot_table1(table["rows"], out / "table1.png")
    if args.json:
        emit_json(table)
        return 0
    s = table["setting"]
    then = "" if s["continue_at"] is None else \
        f", then L={s['continue_at'][0]} for {s['continue_at'][1]} steps from those weights"
    print(f"Table 1, selective copying: {s['num_tokens']} tokens to copy, vocabulary {s['vocab_size']} "
          f"(paper: L=4096); {s['steps']} steps x batch {s['batch_size']} at L={s['seq_len']}{then} "
          f"(no-gate rows: twice the steps)")
    lengths = [stage["seq_len"] for stage in table["rows"][0]["stages"]] if table["rows"] else []
    rows = [[r["row"], r["paper_row"], f"{r['paper']:.1f}"]
            + [f"{100 * stage['accuracy']:.1f}" for stage in r["stages"]]
            + ["+".join(str(stage["steps_done"]) for stage in r["stages"]),
               f"{sum(stage['train_seconds'] for stage in r['stages']):.0f}"]
            for r in table["rows"]]
    print_table(["row", "paper row", "paper %"] + [f"ours % L={n}" for n in lengths] + ["steps", "train s"], rows)
    return 0


def _mqar_sweep(args, out, progress) -> int:
    from mambakit.io.atomic import atomic_write_text
    from mambakit.models import REGISTRY
    from mambakit.plots.synth import plot_mqar_sweep
    from mambakit.tasks.experiments import run_mqar_sweep

    models = args.model or [m for m in ("mamba", "transformer", "s4d", "gru", "mamba2") if m in REGISTRY]
    base = base_config(args, "mqar")
    if args.stop_at is None:
        base = dataclasses.replace(base, stop_at=SWEEP_STOP_AT)
    if args.lrs is not None and args.lr is not None:
        raise ValueError("give --lrs (several learning rates) or --lr (one), not both")
    lrs = args.lrs or (None if args.lr is not None else SWEEP_LRS)
    sweep = run_mqar_sweep(base, models, args.widths, args.lengths, fields_for(args, models), lrs=lrs,
                           warm_start=args.warm_start,
                           on_point=lambda cfg: progress(f"mqar {cfg.model} d{cfg.d_model} L{cfg.seq_len} "
                                                         f"lr {cfg.lr:g}", cfg.total_steps),
                           jobs=args.jobs, threads=args.worker_threads,
                           on_done=finished(args, "mqar point {0[model]} d{0[d_model]} L{0[seq_len]}"))
    if out is not None:
        atomic_write_text(out / "mqar-sweep.json", json.dumps(sweep, indent=2) + "\n")
        plot_mqar_sweep(sweep["points"], out / "mqar-sweep.png", sweep["warm_start"])
    if args.json:
        emit_json(sweep)
        return 0
    widths = sorted({p["d_model"] for p in sweep["points"]})
    rows = []
    for length in sorted({p["seq_len"] for p in sweep["points"]}):
        for model in models:
            acc = {p["d_model"]: p["accuracy"] for p in sweep["points"] if p["seq_len"] == length and p["model"] == model}
            rows.append([str(length), model] + [f"{acc[w]:.3f}" if acc.get(w) is not None else "n/a" for w in widths])
    print("MQAR accuracy (Zoology fig. 2), best learning rate: rows length x model, columns width"
          + ("; each length warm-started from the one before" if sweep["warm_start"] else ""))
    print_table(["length", "model"] + [f"d={w}" for w in widths], rows)
    return 0


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c) for c in col) for col in zip(headers, *rows)]
    for cells in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())


def print_runs(results: list[dict]) -> None:
    """One row per model: parameters, steps, final loss, then token accuracy at each tested length."""
    first = results[0]
    lengths = [e["seq_len"] for e in first["eval"]]
    headers = ["model", "params", "steps", "final loss"] + [f"acc@{n}" + (" (train)" if i == 0 else "")
                                                          for i, n in enumerate(lengths)]
    rows = []
    for r in results:
        loss = "n/a" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        rows.append([r["model"], f"{r['parameters']:,}", str(r["steps_done"]), loss]
                    + [f"{e['token_accuracy']:.3f}" if e["applicable"] else "n/a" for e in r["eval"]])
    print(f"{first['task']}: accuracy = scored tokens exactly right (chance {first['chance']:.3f})")
    print_table(headers, rows)
    for r in results:
        if r["stopped_early"]:
            print(f"{r['model']}: stopped by the time budget after {r['steps_done']} of {r['config']['steps']} steps")
        for e in r["eval"]:
            if not e["applicable"]:
                print(f"{r['model']} length {e['seq_len']}: not applicable ({e['reason']})")
