"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, periodic eval,
metrics to JSONL, atomic checkpoints every N steps and on Ctrl-C, exact resume, and DDP/FSDP.

Exact resume rests on two facts: the batch of step s is a function of (seed, s) only
(`mambakit.data.packing.train_batch`), and the learning rate of step s is a function of s only;
so model + optimizer + RNG state at a step boundary is all there is to restore.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from mambakit.data.packing import Batch, train_batch
from mambakit.data.tokens import TokenDataset
from mambakit.io.checkpoint import export_state, save_weights_dir
from mambakit.train import checkpoint as ckpt
from mambakit.train.distributed import (DistContext, all_reduce_mean, any_rank, init_distributed,
                                        no_sync, shutdown, wrap_model)
from mambakit.train.evaluate import DTYPES, autocast, evaluate, token_nll
from mambakit.train.schedule import build_optimizer, lr_at

METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8           # sequences per optimizer step, all ranks and micro-batches together
    grad_accum: int = 1           # micro-batches per step on each rank
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100         # 0: only at the end
    eval_batches: int = 8
    ckpt_every: int = 0           # 0: only at the end and on Ctrl-C
    keep_checkpoints: int = 2
    seed: int = 0
    dtype: str = "fp32"           # "bf16": autocast matmuls to bfloat16 (CPU or GPU)
    device: str = "auto"
    fsdp: bool = False
    time_budget_s: Optional[float] = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_batches", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("eval_every", "ckpt_every", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.lr, self.warmup_steps, self.steps, self.min_lr_ratio)


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float = 0.0
    final_eval: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    resumed_from: Optional[int] = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: raised after the checkpoint of the last finished step is saved."""


def accumulate_gradients(model, core, data: TokenDataset, cfg: TrainConfig, step: int,
                         ctx: DistContext) -> float:
    """Forward + backward of this rank's share of step `step`'s global batch, in `grad_accum`
    micro-batches; returns this rank's mean loss. Gradients are left in `.grad`."""
    batch = train_batch(data, cfg.seed, step, cfg.batch_size, cfg.seq_len, ctx.rank, ctx.world_size)
    micro = batch.inputs.shape[0] // cfg.grad_accum
    total = 0.0
    for i in range(cfg.grad_accum):
        part = slice(i * micro, (i + 1) * micro)
        mb = Batch(batch.inputs[part].to(ctx.device), batch.targets[part].to(ctx.device),
                   None if batch.reset is None else batch.reset[part].to(ctx.device))
        with no_sync(model, i < cfg.grad_accum - 1):
            with autocast(ctx.device, cfg.dtype):
                loss = token_nll(model, mb, core).mean() / cfg.grad_accum
            loss.backward()
        total += float(loss.detach())
    return total


class _StopOnSignal:
    """First Ctrl-C asks the loop to stop at the next step boundary (a consistent state to save);
    a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("step", 0) <= up_to_step:
            records.append(record)
    return records


def train(model, train_data: TokenDataset, val_data: TokenDataset, cfg: TrainConfig,
          out_dir: Optional[str | Path] = None, resume: bool = False, tokenizer=None,
          on_step: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train `model` (a LanguageModel) and, with `out_dir`, keep checkpoints and metrics there:
    out_dir/metrics.jsonl, out_dir/checkpoints/step-*, and the final model in out_dir itself.
    `on_step(step, record)` is called after every optimizer step."""
    ctx = init_distributed(cfg.device, cfg.fsdp)
    try:
        return _train(model, train_data, val_data, cfg, ctx, out_dir, resume, tokenizer, on_step)
    finally:
        shutdown(ctx)


def _train(core, train_data, val_data, cfg, ctx, out_dir, resume, tokenizer, on_step) -> TrainResult:
    if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {ctx.world_size} "
                         f"process(es) x {cfg.grad_accum} accumulation step(s)")
    model = wrap_model(core, ctx)
    state_owner = model if ctx.fsdp else core   # what holds the full parameter names
    eval_model = model if ctx.fsdp else core    # FSDP forward needs every rank
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    out = Path(out_dir) if out_dir is not None else None
    root = None if out is None else out / "checkpoints"
    result = TrainResult(steps=0)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        found = ckpt.latest_checkpoint(root)
        if found is not None and not resume:
            raise ValueError(f"{out} already holds a training run ({found.name}); pass --resume to "
                             "continue it, or choose another --out")
        if found is not None:
            state = ckpt.load_checkpoint(found, state_owner, opt, core)
            if state.get("seed") != cfg.seed:
                raise ValueError(f"{found} was trained with seed {state.get('seed')}, not {cfg.seed}; "
                                 "resume with the same --seed")
            result.steps = result.resumed_from = state["step"]
            result.checkpoint = found
        result.history = _read_metrics(out / METRICS_NAME, result.steps)
    metrics = None
    if out is not None and ctx.is_main:
        metrics = open(out / METRICS_NAME, "w", encoding="utf-8")
        metrics.writelines(json.dumps(r) + "\n" for r in result.history)
        metrics.flush()

    def log(record: dict) -> None:
        result.history.append(record)
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def save() -> None:
        if root is None:
            return
        model_state, optim_state = ckpt.gather_state(state_owner, opt)
        if ctx.is_main:
            result.checkpoint = ckpt.write_checkpoint(
                root, result.steps, model_state, optim_state, core, {"seed": cfg.seed},
                keep=cfg.keep_checkpoints, tokenizer=tokenizer)

    def run_eval() -> dict:
        return evaluate(eval_model, val_data, cfg.seq_len, cfg.batch_size, cfg.eval_batches, cfg.dtype)

    tokens_per_step = cfg.batch_size * cfg.seq_len
    train_time, session_steps, started = 0.0, 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=result.steps, disable=not (cfg.progress and ctx.is_main),
               desc="train", unit="step")
    core.train()
    try:
        with _StopOnSignal() as stop:
            while result.steps < cfg.steps:
                step = result.steps
                t = time.perf_counter()
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step)
                loss = all_reduce_mean(accumulate_gradients(model, core, train_data, cfg, step, ctx), ctx)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    opt.zero_grad(set_to_none=True)
                    kept = f"the last good checkpoint is {result.checkpoint}" if result.checkpoint \
                        else "no checkpoint had been written yet"
                    what = f"loss became {loss}" if not math.isfinite(loss) \
                        else f"gradient norm became {grad_norm}"
                    raise FloatingPointError(f"{what} at step {step + 1}; stopped before updating the "
                                             f"weights ({kept}); try a lower --lr")
                opt.step()
                opt.zero_grad(set_to_none=True)
                result.steps += 1
                session_steps += 1
                train_time += time.perf_counter() - t
                tok_s = session_steps * tokens_per_step / train_time
                record = {"step": result.steps, "loss": loss, "lr": cfg.lr_at(step), "grad_norm": grad_norm,
                          "tokens": result.steps * tokens_per_step, "tokens_per_s": tok_s,
                          "elapsed_s": time.perf_counter() - started}
                if cfg.eval_every and result.steps % cfg.eval_every == 0 and result.steps < cfg.steps \
                        and (ctx.is_main or ctx.fsdp):
                    record["val"] = run_eval()
                log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
                if on_step is not None:
                    on_step(result.steps, record)
                if cfg.ckpt_every and result.steps % cfg.ckpt_every == 0:
                    save()
                over_budget = cfg.time_budget_s is not None \
                    and time.perf_counter() - started > cfg.time_budget_s
                if any_rank(stop.requested, ctx):
                    save()
                    where = f"; checkpoint saved to {result.checkpoint}" if result.checkpoint else ""
                    raise TrainingInterrupted(f"interrupted at step {result.steps}{where}")
                if any_rank(over_budget, ctx):
                    break
        result.tokens_per_s = session_steps * tokens_per_step / train_time if train_time else 0.0
        if ctx.is_main or ctx.fsdp:
            result.final_eval = run_eval()
            log({"step": result.steps, "val": result.final_eval})
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    save()
    if out is not None:
        model_state, _ = ckpt.gather_state(state_owner, opt) if ctx.fsdp else (core.state_dict(), None)
        if ctx.is_main:
            save_weights_dir(out, core.config, export_state(core, state=model_state))
            if tokenizer is not None:
                tokenizer.save(out)
    return result
