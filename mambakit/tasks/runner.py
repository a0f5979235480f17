"""Train any registered model on a synthetic task and measure it, at the training length and beyond.

    from mambakit.tasks import SynthConfig, run_synth
    result = run_synth(SynthConfig(task="induction-heads", model="mamba", seq_len=64, steps=800, lr=5e-3))
    result["eval"]   # [{"seq_len": 64, "applicable": True, "token_accuracy": ..., ...}, 128, 256]

Every step draws a fresh batch (no data set, nothing to overfit); evaluation uses held-out batches
from a separate seed. Length extrapolation is the paper's question: a model trained at length l is
tested at longer lengths (default 2l and 4l) without further training.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.models import LanguageModel, build, from_config, model_class
from mambakit.models.budget import size_family
from mambakit.tasks.common import IGNORE_INDEX, require_int, seeded
from mambakit.tasks.induction_heads import check_induction_heads, induction_heads
from mambakit.tasks.selective_copying import check_selective_copying, selective_copying
from mambakit.train.distributed import resolve_device
from mambakit.train.schedule import build_optimizer, lr_at

# Evaluation batches come from their own stream, far from any training seed's.
EVAL_SEED_OFFSET = 1_000_000_007


@dataclass(frozen=True)
class Task:
    sample: Callable[["SynthConfig", int, int, torch.Generator], tuple[Tensor, Tensor]]
    check_length: Callable[["SynthConfig", int], None]
    answers: Callable[["SynthConfig"], int]     # tokens a scored position can hold: chance = 1/answers


TASKS: dict[str, Task] = {
    "selective-copying": Task(
        sample=lambda cfg, b, l, g: selective_copying(b, l, cfg.num_tokens, cfg.vocab_size, g),
        check_length=lambda cfg, l: check_selective_copying(l, cfg.num_tokens, cfg.vocab_size),
        answers=lambda cfg: cfg.vocab_size - 2),
    "induction-heads": Task(
        sample=lambda cfg, b, l, g: induction_heads(b, l, cfg.vocab_size, g),
        check_length=lambda cfg, l: check_induction_heads(l, cfg.vocab_size),
        answers=lambda cfg: cfg.vocab_size - 1),
}

# SynthConfig fields that size the model; model_fields may not restate them.
_SIZE_FIELDS = ("d_model", "n_layer", "vocab_size")


@dataclass
class SynthConfig:
    task: str = "selective-copying"
    model: str = "mamba"
    d_model: int = 64                   # the paper's synthetic-task models: 2 layers, d_model 64
    n_layer: int = 2
    budget_params: Optional[int] = None     # size d_model to about this many parameters instead
    model_fields: dict[str, Any] = field(default_factory=dict)  # other config fields, e.g. d_state
    # Lengths and steps sized for a CPU run of about two minutes; the paper trains selective copying
    # at seq_len 4096 with 16 data tokens and induction heads at 256, both with vocab_size 16.
    vocab_size: int = 16                # every token id, special ones included
    num_tokens: int = 4                 # selective copying: data tokens to remember
    seq_len: int = 64
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0           # fresh data every step: nothing to overfit, nothing to decay
    grad_clip: float = 1.0
    eval_lengths: Optional[tuple[int, ...]] = None  # lengths tested besides seq_len; None: 2x and 4x
    eval_samples: int = 256
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {sorted(TASKS)}")
        model_class(self.model)
        for name in ("d_model", "n_layer", "vocab_size", "num_tokens", "seq_len", "steps",
                     "batch_size", "eval_samples"):
            require_int(f"SynthConfig.{name}", getattr(self, name), 1)
        require_int("SynthConfig.warmup_steps", self.warmup_steps, 0)
        require_int("SynthConfig.seed", self.seed, 0)
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SynthConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1 or self.weight_decay < 0:
            raise ValueError("SynthConfig.min_lr_ratio must be in [0, 1] and weight_decay >= 0")
        if self.budget_params is not None:
            require_int("SynthConfig.budget_params", self.budget_params, 1)
            if self.model_fields:
                raise ValueError("budget_params sizes the model itself; "
                                 "it cannot be combined with model_fields")
        clash = sorted(set(self.model_fields) & set(_SIZE_FIELDS))
        if clash:
            raise ValueError(f"model_fields may not set {clash}: use the SynthConfig fields of the same name")
        if self.eval_lengths is None:
            self.eval_lengths = (2 * self.seq_len, 4 * self.seq_len)
        self.eval_lengths = tuple(self.eval_lengths)
        for length in (self.seq_len, *self.eval_lengths):
            TASKS[self.task].check_length(self, length)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Every evaluated length, the training length first, each once."""
        return tuple(dict.fromkeys((self.seq_len, *self.eval_lengths)))

    @property
    def chance(self) -> float:
        return 1.0 / TASKS[self.task].answers(self)

    def sample(self, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """inputs (b, l), targets (b, l) of this config's task (targets IGNORE_INDEX where unscored)."""
        return TASKS[self.task].sample(self, batch_size, seq_len, generator)


def build_synth_model(cfg: SynthConfig) -> LanguageModel:
    """A freshly initialised model for `cfg`, the same weights for the same seed."""
    with torch.random.fork_rng(devices=[]):         # seed the init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        if cfg.budget_params is not None:
            return from_config(size_family(cfg.model, cfg.budget_params, cfg.vocab_size, cfg.n_layer))
        return build(cfg.model, None, d_model=cfg.d_model, n_layer=cfg.n_layer,
                     vocab_size=cfg.vocab_size, **cfg.model_fields)


def length_limit(model: LanguageModel) -> Optional[int]:
    """The longest input `model` accepts, or None when any length works. Learned position tables
    end at max_seq_len; RoPE, recurrences and scans have no such end."""
    config = model.config
    return config.max_seq_len if getattr(config, "positions", None) == "learned" else None


def task_logits(model: LanguageModel, inputs: Tensor, vocab_size: int) -> Tensor:
    """(b, l) -> (b, l, vocab_size): the padded vocabulary entries are never an answer."""
    return model(inputs)[..., :vocab_size]


@torch.no_grad()
def evaluate_synth(model: LanguageModel, cfg: SynthConfig, seq_len: int) -> dict:
    """Accuracy on `cfg.eval_samples` held-out sequences of length `seq_len`: the fraction of scored
    positions predicted exactly (argmax), and of sequences with every scored position right."""
    limit = length_limit(model)
    if limit is not None and seq_len > limit:
        return {"seq_len": seq_len, "applicable": False, "token_accuracy": None,
                "sequence_accuracy": None, "reason": f"learned positions end at max_seq_len {limit}"}
    was_training = model.training
    model.eval()
    generator = seeded(cfg.seed + EVAL_SEED_OFFSET)
    right = scored = solved = 0
    for start in range(0, cfg.eval_samples, cfg.batch_size):
        inputs, targets = cfg.sample(min(cfg.batch_size, cfg.eval_samples - start), seq_len, generator)
        predicted = task_logits(model, inputs.to(model.device), cfg.vocab_size).argmax(-1).cpu()  # (b, l)
        mask = targets != IGNORE_INDEX
        hits = (predicted == targets) & mask
        right += int(hits.sum())
        scored += int(mask.sum())
        solved += int((hits.sum(-1) == mask.sum(-1)).sum())
    model.train(was_training)
    return {"seq_len": seq_len, "applicable": True, "token_accuracy": right / scored,
            "sequence_accuracy": solved / cfg.eval_samples}


def train_synth(model: LanguageModel, cfg: SynthConfig,
                on_progress: Optional[Callable[[int, int, float], None]] = None) -> list[float]:
    """AdamW with warmup + cosine on fresh batches; calls on_progress(step, steps, loss) after each
    step. Returns the loss of every step."""
    limit = length_limit(model)
    if limit is not None and cfg.seq_len > limit:
        raise ValueError(f"seq_len {cfg.seq_len} is past the model's max_seq_len {limit}")
    device = model.device
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    generator = seeded(cfg.seed)
    model.train()
    losses = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        inputs, targets = cfg.sample(cfg.batch_size, cfg.seq_len, generator)
        logits = task_logits(model, inputs.to(device), cfg.vocab_size)              # (b, l, v)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.to(device).reshape(-1),
                               ignore_index=IGNORE_INDEX)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step + 1}; try a lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(value)
        if on_progress is not None:
            on_progress(step + 1, cfg.steps, value)
    return losses


def run_synth(cfg: SynthConfig, on_progress: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """Build, train and evaluate one model on `cfg.task`; returns a JSON-ready results dict."""
    model = build_synth_model(cfg).to(resolve_device(cfg.device))
    start = time.perf_counter()
    losses = train_synth(model, cfg, on_progress)
    train_seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]      # the last tenth: a less noisy final loss
    return {"task": cfg.task, "model": cfg.model, "parameters": model.num_parameters(),
            "config": dataclasses.asdict(cfg), "chance": cfg.chance,
            "final_loss": sum(tail) / len(tail), "train_seconds": train_seconds,
            "eval": [evaluate_synth(model, cfg, length) for length in cfg.lengths]}
