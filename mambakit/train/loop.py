"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, periodic eval,
metrics to JSONL, atomic checkpoints every N steps and on Ctrl-C, exact resume, and DDP/FSDP.

Exact resume rests on two facts: the batch of step s is a function of (seed, s) only
(`mambakit.data.packing.train_batch`), and the learning rate of step s is a function of s only;
so model + optimizer + RNG state at a step boundary is all there is to restore — provided the
settings that shape those functions are the same, which a resume checks (`RESULT_SETTINGS`).

`train` holds the run folder (run_dir.py), `_Run` owns one concern per method (resume, one
optimizer step, evaluation, checkpoints, the final export), and `_loop` only sequences them.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from mambakit.checks import require_finite, require_int
from mambakit.data.packing import Batch, train_batch
from mambakit.data.tokenizer import tokenizer_fingerprint
from mambakit.data.tokens import TokenDataset
from mambakit.io.files import CheckpointError
from mambakit.io.weights import export_state, save_weights_dir
from mambakit.models.base import check_memory
from mambakit.train import checkpoint as ckpt
from mambakit.train.distributed import (
    DistContext,
    all_reduce_mean,
    any_rank,
    init_distributed,
    no_sync,
    shutdown,
    wrap_model,
)
from mambakit.train.evaluate import DTYPES, autocast, evaluate, mean_loss
from mambakit.train.guards import (
    StopOnSignal,
    TimeBudget,
    finite_step,
    nonfinite_parameters,
    nonfinite_step,
    weights_went_nonfinite,
)
from mambakit.train.metrics import METRICS_NAME, MetricsLog, read_metrics
from mambakit.train.run_dir import open_run
from mambakit.train.schedule import build_optimizer, lr_at

# TrainConfig fields that change what a run computes; a resume that changes one is refused
# unless allowed (eval, checkpoint, device and progress settings only change what is observed).
RESULT_SETTINGS = ("seed", "steps", "batch_size", "grad_accum", "seq_len", "lr", "min_lr_ratio",
                   "warmup_steps", "weight_decay", "grad_clip", "dtype")


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
    grad_checkpoint: bool = False  # recompute each layer in the backward: less memory, ~1.3x time
    device: str = "auto"
    fsdp: bool = False
    time_budget_s: Optional[float] = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_batches", "keep_checkpoints"):
            require_int(f"TrainConfig.{name}", getattr(self, name))
        for name in ("eval_every", "ckpt_every", "warmup_steps", "seed"):
            require_int(f"TrainConfig.{name}", getattr(self, name), 0)
        for name in ("lr", "grad_clip"):
            require_finite(f"TrainConfig.{name}", getattr(self, name), 0.0, low_inclusive=False)
        for name in ("min_lr_ratio", "weight_decay"):
            require_finite(f"TrainConfig.{name}", getattr(self, name), 0.0)
        if self.time_budget_s is not None:
            require_finite("TrainConfig.time_budget_s", self.time_budget_s, 0.0)
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
                loss = mean_loss(model, mb, core) / cfg.grad_accum
            loss.backward()
        total += float(loss.detach())
    return total


def run_settings(cfg: TrainConfig, data: TokenDataset, tokenizer) -> dict:
    """What a checkpoint records of the run's settings, and a resume compares."""
    settings = {k: v for k, v in asdict(cfg).items() if k in RESULT_SETTINGS}
    settings["data"] = data.fingerprint()
    settings["tokenizer"] = None if tokenizer is None else tokenizer_fingerprint(tokenizer)
    return settings


def train(model, train_data: TokenDataset, val_data: TokenDataset, cfg: TrainConfig,
          out_dir: Optional[str | Path] = None, resume: bool = False, tokenizer=None,
          on_step: Optional[Callable[[int, dict], None]] = None,
          allow_changes: bool = False) -> TrainResult:
    """Train `model` (a LanguageModel) and, with `out_dir`, keep checkpoints and metrics there:
    out_dir/metrics.jsonl, out_dir/checkpoints/step-*, and the final model in out_dir itself.
    `on_step(step, record)` is called after every optimizer step. A resume that changes a
    setting in RESULT_SETTINGS, the data or the tokenizer is refused unless `allow_changes`
    (then it warns)."""
    ctx = init_distributed(cfg.device, cfg.fsdp)
    held = open_run(out_dir) if out_dir is not None and ctx.is_main else contextlib.nullcontext()
    try:
        with held:
            run = _Run(model, cfg, ctx, None if out_dir is None else Path(out_dir), tokenizer,
                       run_settings(cfg, train_data, tokenizer))
            if resume:
                run.resume(allow_changes)
            run.refuse_overwrite()
            return _loop(run, train_data, val_data, on_step)
    finally:
        shutdown(ctx)


def activation_bytes(config, tokens: int) -> int:
    """A floor on what one forward + backward keeps: ~16 d_model-wide fp32 activations per layer
    and token (Mamba keeps x, z, Δ, B, C, y, ...). The loss over the vocabulary runs in chunks of
    fixed size (LanguageModel.head), so no logits-wide term grows with the tokens."""
    width = getattr(config, "d_model", 0) * getattr(config, "n_layer", 0)
    return tokens * 4 * 16 * width


class _Run:
    """One training run's state: the model (and its DDP/FSDP wrapper), optimizer, run folder."""

    def __init__(self, core, cfg: TrainConfig, ctx: DistContext, out: Optional[Path], tokenizer,
                 settings: dict):
        if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {ctx.world_size} "
                             f"process(es) x {cfg.grad_accum} accumulation step(s)")
        micro = cfg.batch_size // (ctx.world_size * cfg.grad_accum)
        check_memory(f"a training step of {micro} x {cfg.seq_len} tokens per process",
                     activation_bytes(core.config, micro * cfg.seq_len),
                     "use a smaller --batch-size or --seq-len, or more --grad-accum")
        core.gradient_checkpointing = cfg.grad_checkpoint
        self.core, self.cfg, self.ctx, self.out = core, cfg, ctx, out
        self.tokenizer, self.settings = tokenizer, settings
        self.model = wrap_model(core, ctx)
        # FSDP: the wrapper holds the full parameter names and its forward needs every rank
        self.owner = self.model if ctx.fsdp else core
        self.opt = build_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.root = None if out is None else out / "checkpoints"
        self.result = TrainResult(steps=0)

    # -- resume -------------------------------------------------------------------------------
    def resume(self, allow_changes: bool) -> None:
        found = None if self.root is None else ckpt.latest_checkpoint(self.root)
        if found is None:
            return
        state = ckpt.load_checkpoint(found, self.owner, self.opt, self.core)
        bad = nonfinite_parameters(self.core)
        if bad:
            raise CheckpointError(f"{found} holds non-finite weights ({', '.join(bad[:3])}); "
                                  f"resume from an earlier checkpoint or start afresh")
        self._compare_settings(found, state.get("settings") or {"seed": state.get("seed")},
                               allow_changes)
        self.result.steps = self.result.resumed_from = state["step"]
        self.result.checkpoint = found

    def _compare_settings(self, found: Path, saved: dict, allow_changes: bool) -> None:
        changed = {k: (saved[k], self.settings.get(k)) for k in saved if saved[k] != self.settings.get(k)}
        if not changed:
            return
        what = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        if not allow_changes:
            raise ValueError(f"{found} was trained with other settings ({what}); resume with the "
                             f"same ones, or pass --allow-changes to continue with the new ones")
        warnings.warn(f"resuming {found} with changed settings ({what}): the result will differ "
                      f"from an uninterrupted run", stacklevel=3)

    def refuse_overwrite(self) -> None:
        found = None if self.root is None else ckpt.latest_checkpoint(self.root)
        if found is not None and self.result.resumed_from is None:
            raise ValueError(f"{self.out} already holds a training run ({found.name}); pass --resume "
                             "to continue it, or choose another --out")

    # -- one step -----------------------------------------------------------------------------
    def _kept(self) -> str:
        return (f"the last good checkpoint is {self.result.checkpoint}" if self.result.checkpoint
                else "no checkpoint had been written yet")

    def optimizer_step(self, data: TokenDataset) -> dict:
        """Forward, backward, clip and update for step `result.steps`; stops on non-finite loss or
        gradients (before the update) and on weights the update made non-finite."""
        cfg, step = self.cfg, self.result.steps
        lr = cfg.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = all_reduce_mean(accumulate_gradients(self.model, self.core, data, cfg, step, self.ctx), self.ctx)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        if not finite_step(loss, grad_norm):
            self.opt.zero_grad(set_to_none=True)
            raise nonfinite_step(loss, grad_norm, step + 1, self._kept())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.check_weights(step + 1)   # an lr of 1e38 breaks the weights with a finite loss
        return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}

    def check_weights(self, step: int) -> None:
        bad = nonfinite_parameters(self.model)
        if any_rank(bool(bad), self.ctx):
            raise weights_went_nonfinite(bad or ["on another rank"], step, self._kept())

    def evaluate(self, data: TokenDataset) -> dict:
        cfg = self.cfg
        return evaluate(self.owner, data, cfg.seq_len, cfg.batch_size, cfg.eval_batches, cfg.dtype)

    @property
    def evaluates(self) -> bool:
        return self.ctx.is_main or self.ctx.fsdp   # FSDP forward needs every rank

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the current step (a collective under FSDP); never non-finite weights."""
        if self.root is None:
            return
        self.check_weights(self.result.steps)
        model_state, optim_state = ckpt.gather_state(self.owner, self.opt)
        if self.ctx.is_main:
            trainer_state = {"seed": self.cfg.seed, "settings": self.settings}
            self.result.checkpoint = ckpt.write_checkpoint(
                self.root, self.result.steps, model_state, optim_state, self.core, trainer_state,
                keep=self.cfg.keep_checkpoints, tokenizer=self.tokenizer)

    def export_final(self) -> None:
        """The final model (and tokenizer) in the run folder itself: a loadable model directory."""
        if self.out is None:
            return
        if self.ctx.fsdp:
            model_state, _ = ckpt.gather_state(self.owner, self.opt)
        else:
            model_state = self.core.state_dict()
        if self.ctx.is_main:
            save_weights_dir(self.out, self.core.config, export_state(self.core, state=model_state))
            if self.tokenizer is not None:
                self.tokenizer.save(self.out)


def _loop(run: _Run, train_data: TokenDataset, val_data: TokenDataset, on_step) -> TrainResult:
    cfg, ctx, result = run.cfg, run.ctx, run.result
    metrics_path = None if run.out is None else run.out / METRICS_NAME
    history = [] if metrics_path is None else read_metrics(metrics_path, result.steps)
    metrics = MetricsLog(metrics_path if ctx.is_main else None, history)
    result.history = metrics.history
    tokens_per_step = cfg.batch_size * cfg.seq_len
    train_time, session_steps, budget = 0.0, 0, TimeBudget(cfg.time_budget_s)
    bar = tqdm(total=cfg.steps, initial=result.steps, disable=not (cfg.progress and ctx.is_main),
               desc="train", unit="step")
    run.core.train()
    try:
        with StopOnSignal() as stop:
            while result.steps < cfg.steps:
                t = time.perf_counter()
                record = run.optimizer_step(train_data)
                result.steps += 1
                session_steps += 1
                train_time += time.perf_counter() - t
                record.update(tokens=result.steps * tokens_per_step,
                              tokens_per_s=session_steps * tokens_per_step / train_time,
                              elapsed_s=budget.elapsed())
                if cfg.eval_every and result.steps % cfg.eval_every == 0 and result.steps < cfg.steps \
                        and run.evaluates:
                    record["val"] = run.evaluate(val_data)
                metrics.log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
                if on_step is not None:
                    on_step(result.steps, record)
                if cfg.ckpt_every and result.steps % cfg.ckpt_every == 0:
                    run.save()
                if any_rank(stop.requested, ctx):
                    run.save()
                    where = f"; checkpoint saved to {result.checkpoint}" if result.checkpoint else ""
                    raise TrainingInterrupted(f"interrupted at step {result.steps}{where}")
                if any_rank(budget.spent(), ctx):
                    break
        result.tokens_per_s = session_steps * tokens_per_step / train_time if train_time else 0.0
        if run.evaluates:
            result.final_eval = run.evaluate(val_data)
            metrics.log({"step": result.steps, "val": result.final_eval})
    finally:
        bar.close()
        metrics.close()
    run.save()
    run.export_final()
    return result
