"""The papers' synthetic experiments as library calls: Table 1 of the Mamba paper and Zoology's
MQAR sweep. Each returns JSON-ready results; `mambakit synth table1 | mqar-sweep` prints and plots them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Optional

from mambakit.tasks.runner import SynthConfig, run_synth

# Mamba paper, Table 1 (selective copying, L=4096, 16 tokens, vocabulary 16): accuracy in %.
# (row, registry model, its config fields, the paper's row it stands for, the paper's accuracy,
#  its steps as a multiple of the table's --steps)
# Within each architecture only selection differs: every row keeps N = 16 real state values per
# channel, Mamba's d_state (S4, S4D: 8 conjugate pairs), so the LTI and selective rows of one
# architecture also match in parameters (S4 18.0k vs S6 17.0k, Mamba+S4D 64.4k vs Mamba 66.5k at
# d_model 64) and in steps. The no-gate rows, about half the cost per step of the Mamba-block
# rows (no expansion), train twice as many steps, so every row takes about the same time.
TABLE1_ROWS = (
    ("S4, no gate", "s4", {"output": "linear", "d_state": 16}, "No gate / S4", 18.3, 2),
    ("S6, no gate", "s6", {}, "No gate / S6", 97.0, 2),
    ("Mamba block + S4D", "mamba-s4d", {"d_state": 16}, "Mamba / S4", 56.4, 1),
    ("Mamba block + S6", "mamba", {}, "Mamba / S6", 99.8, 1),
)
TABLE1_MODELS = tuple(row[1] for row in TABLE1_ROWS)
# Trained at L=128, the LTI rows copy 64-77% of tokens: the block's conv and gate let an LTI layer
# count its way through 112 positions. The paper's gap is at L=4096. Each row therefore trains on
# at 256 (from its own weights: from scratch at 256 with batch 16, Mamba was still at loss 2.3
# after 4000 steps), where the selective rows carry their skill over and the LTI rows start again.
TABLE1_CONTINUE = (256, 1500)


def _checkpoints(base: SynthConfig, name: str) -> Optional[str]:
    """Each run of an experiment checkpoints in its own folder under base.checkpoint_dir."""
    return None if base.checkpoint_dir is None else str(Path(base.checkpoint_dir) / name)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def in_workers(fn: Callable, calls: list[tuple], jobs: int = 1, threads: int = 1,
               on_done: Optional[Callable[[int], None]] = None) -> list:
    """[fn(*args) for args in calls], in order. With jobs > 1 the calls run in that many worker
    processes of `threads` intra-op threads each: the synthetic tasks' tiny models use cores
    better as processes than as threads within a step, whose ops are small (measured on an idle
    2-core machine, Mamba at L=128: two 1-thread processes made 1.24x the steps per second of one
    2-thread process; on a busy machine threads fare far worse, see mambakit.threads).
    `on_done(i)` is called as call i finishes. A worker's exception is re-raised here."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    if jobs == 1 or len(calls) <= 1:
        results = []
        for i, args in enumerate(calls):
            results.append(fn(*args))
            if on_done is not None:
                on_done(i)
        return results
    # spawn, not fork: a forked child would inherit this process's OpenMP pool in whatever state
    with ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        results = [None] * len(calls)
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_done is not None:
                    on_done(futures[future])
        except BaseException:
            # calls not started are dropped; running ones finish (and checkpoint) before this returns
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return results


def run_table1(base: SynthConfig, on_row: Optional[Callable[[str, SynthConfig], Callable]] = None,
               models: Optional[list[str]] = None, continue_at: Optional[tuple[int, int]] = TABLE1_CONTINUE,
               jobs: int = 1, threads: int = 1, on_done: Optional[Callable[[str], None]] = None) -> dict:
    """Train and evaluate the Table 1 rows of `models` (default: all, in the table's order) with
    `base`'s task settings (selective copying). Each row checkpoints in its own folder, so rows
    run apart (other processes, other machines) are picked up finished by a later full run.

    `continue_at` = (length, steps): each row then trains on at that longer length from its own
    weights (a run of its own, `steps` x the row's step factor, the same tokens per batch) and is
    scored there; None scores each row at base.seq_len. Without base.checkpoint_dir the hand-over
    goes through a temporary folder.

    `on_row(row, cfg)` may return the `on_progress` callback of a row's training run (one process
    only). `jobs` > 1 trains that many rows at once, in worker processes of `threads` threads each;
    `on_done(row)` is called as each row finishes.
    Returns {"rows": [{row, model, paper_row, paper, accuracy, result, results, stages}], "setting": ...}:
    `results` has each run's result, `result` the last one's (scored in `accuracy`), `stages` each
    run's length, steps, accuracy and seconds.
    """
    if base.task != "selective-copying":
        raise ValueError(f"Table 1 is selective copying, got task {base.task!r}")
    if base.model_fields or base.budget_params is not None or base.init_from is not None:
        raise ValueError("Table 1 fixes each row's model; it takes no model fields, parameter budget or init_from")
    unknown = sorted(set(models or ()) - set(TABLE1_MODELS))
    if unknown:
        raise ValueError(f"not a Table 1 row: {', '.join(unknown)}; the rows are {', '.join(TABLE1_MODELS)}")
    if continue_at is not None:
        length, steps = continue_at
        if length <= base.seq_len or steps < 1:
            raise ValueError(f"continue_at must be a length past seq_len {base.seq_len} and steps >= 1, "
                             f"got {continue_at}")
    with contextlib.ExitStack() as stack:
        if continue_at is not None and base.checkpoint_dir is None:
            base = dataclasses.replace(base, checkpoint_dir=stack.enter_context(
                tempfile.TemporaryDirectory(prefix="table1-")))
        chosen = [spec for spec in TABLE1_ROWS if not models or spec[1] in models]
        calls = []
        for row, model, fields, *_, steps_factor in chosen:
            first = dataclasses.replace(base, model=model, model_fields=dict(fields), steps=base.steps * steps_factor,
                                        checkpoint_dir=_checkpoints(base, f"table1-{model}"))
            stages = [first]
            if continue_at is not None:
                length, steps = continue_at
                stages.append(dataclasses.replace(
                    first, seq_len=length, batch_size=max(1, first.batch_size * first.seq_len // length),
                    steps=steps * steps_factor, eval_lengths=(), init_from=first.checkpoint_dir,
                    checkpoint_dir=_checkpoints(base, f"table1-{model}-l{length}")))
            calls.append((stages, [on_row(row, cfg) if on_row is not None and jobs == 1 else None for cfg in stages]))
        results = in_workers(_in_turn, calls, jobs, threads,
                             on_done=None if on_done is None else lambda i: on_done(chosen[i][0]))
    rows = [{"row": row, "model": model, "paper_row": paper_row, "paper": paper,
             "accuracy": runs[-1]["eval"][0]["token_accuracy"], "result": runs[-1], "results": runs,
             "stages": [{"seq_len": r["config"]["seq_len"], "steps_done": r["steps_done"],
                         "accuracy": r["eval"][0]["token_accuracy"], "train_seconds": r["train_seconds"]}
                        for r in runs]}
            for (row, model, _, paper_row, paper, _), runs in zip(chosen, results)]
    return {"setting": {**{k: getattr(base, k) for k in ("seq_len", "num_tokens", "vocab_size", "steps",
                                                          "batch_size", "lr", "time_budget")},
                        "continue_at": continue_at},
            "rows": rows}


def _in_turn(cfgs: list[SynthConfig], progress: list[Optional[Callable]]) -> list[dict]:
    """run_synth on each config in order (a row's stages: each starts from the one before)."""
    return [run_synth(cfg, on_progress) for cfg, on_progress in zip(cfgs, progress)]


def run_mqar_sweep(base: SynthConfig, models: list[str], widths: list[int], lengths: list[int],
                   model_fields: Optional[dict[str, dict]] = None,
                   kv_pairs: Optional[Callable[[int], int]] = None,
                   on_point: Optional[Callable[[SynthConfig], Callable]] = None,
                   lrs: Optional[list[float]] = None, warm_start: bool = False, jobs: int = 1, threads: int = 1,
                   on_done: Optional[Callable[[dict], None]] = None) -> dict:
    """Zoology's figure 2: every model × width × sequence length on MQAR, evaluated at its training
    length. `model_fields[model]` adds to that model's config fields; `kv_pairs(seq_len)` gives the
    key-value pairs (default seq_len // 16, at least 1, as figure 2).

    Like Zoology, each point trains at every learning rate of `lrs` (default: base.lr alone) and
    reports the best; the rates are tried in order and, once one reaches base.stop_at, the rest
    are skipped (nothing left to gain). Each point's "runs" lists every rate tried.

    `warm_start` (not Zoology's protocol, which trains every point from scratch with ~200x our
    steps): each length after the first starts from the same model and width's best run at the
    length before and trains on at that run's learning rate only, a curriculum that needs
    base.checkpoint_dir. `jobs` > 1 trains that many points
    (with warm_start: model × width chains) at once, in worker processes of `threads` threads each
    (`on_point`'s progress callbacks need one process); `on_done(point)` is called as each finishes."""
    if base.task != "mqar":
        raise ValueError(f"the MQAR sweep needs task 'mqar', got {base.task!r}")
    if base.init_from is not None:
        raise ValueError("the sweep trains many models, which no single init_from fits (see warm_start)")
    if warm_start and base.checkpoint_dir is None:
        raise ValueError("a warm-started sweep starts each length from the last one's checkpoint: "
                         "it needs a checkpoint_dir")
    pairs = kv_pairs or (lambda length: max(1, length // 16))
    rates = list(lrs) if lrs else [base.lr]

    def point(model: str, width: int, i: int) -> list[SynthConfig]:
        length, name = lengths[i], f"mqar-{model}-d{width}-l{lengths[i]}"
        return [dataclasses.replace(base, model=model, d_model=width, seq_len=length, lr=lr,
                                    model_fields={**base.model_fields, **(model_fields or {}).get(model, {})},
                                    num_tokens=pairs(length), eval_lengths=(),
                                    checkpoint_dir=_checkpoints(base, name + (f"-lr{lr:g}" if lrs else "")
                                                                + (f"-from-l{lengths[i - 1]}" if warm_start and i else "")))
                for lr in rates]

    # units of work: a point each, or with warm_start one chain over the lengths per model and width
    grid = [(i, width, model) for i in range(len(lengths)) for width in widths for model in models]
    if warm_start:
        chains = [[(i, width, model) for i in range(len(lengths))] for width in widths for model in models]
    else:
        chains = [[spot] for spot in grid]
    calls = [([point(model, width, i) for i, width, model in chain], warm_start, on_point if jobs == 1 else None)
             for chain in chains]
    spec = {spot: {"model": spot[2], "d_model": spot[1], "seq_len": lengths[spot[0]],
                   "num_kv_pairs": pairs(lengths[spot[0]])} for spot in grid}
    done = None if on_done is None else lambda c: on_done(spec[chains[c][-1]])
    found = {}
    for chain, bests in zip(chains, in_workers(_mqar_chain, calls, jobs, threads, on_done=done)):
        found.update(zip(chain, bests))
    return {"warm_start": warm_start, "points": [{**spec[spot], **found[spot]} for spot in grid]}


def _mqar_chain(points: list[list[SynthConfig]], warm_start: bool,
                on_point: Optional[Callable[[SynthConfig], Callable]]) -> list[dict]:
    """Each point in turn (with warm_start, each continuing the previous point's best run, at its rate)."""
    bests = []
    for cfgs in points:
        if warm_start and bests:
            cfgs = [dataclasses.replace(cfg, init_from=bests[-1]["result"]["config"]["checkpoint_dir"])
                    for cfg in cfgs if cfg.lr == bests[-1]["lr"]]
        bests.append(_mqar_point(cfgs, on_point))
    return bests


def _mqar_point(cfgs: list[SynthConfig], on_point: Optional[Callable[[SynthConfig], Callable]]) -> dict:
    """One sweep point: train at each learning rate in turn until one reaches its stop_at; the best."""
    tried = []                                               # (summary, full result) per rate
    for cfg in cfgs:
        result = run_synth(cfg, on_point(cfg) if on_point is not None else None)
        tried.append(({"lr": cfg.lr, "accuracy": result["eval"][0]["token_accuracy"],
                       "steps_done": result["steps_done"], "train_seconds": result["train_seconds"]}, result))
        if result["reached_stop_at"]:
            break
    best, result = max(tried, key=lambda run: run[0]["accuracy"])
    return {"lr": best["lr"], "accuracy": best["accuracy"], "result": result,
            "runs": [summary for summary, _ in tried]}
