"""Train any registered model on a synthetic task and measure it, at the training length and beyond.

    from mambakit.tasks import SynthConfig, run_synth
    result = run_synth(SynthConfig(task="induction-heads", model="mamba", seq_len=64, steps=800, lr=5e-3))
    result["eval"]   # [{"seq_len": 64, "applicable": True, "token_accuracy": ..., ...}, 128, 256]

Every step draws a fresh batch (no data set, nothing to overfit); evaluation uses held-out batches
from a separate seed. Length extrapolation is the paper's question: a model trained at length l is
tested at longer lengths (default 2l and 4l) without further training. A run stops early at its
`time_budget`, and with `checkpoint_dir` it checkpoints (model, optimizer, RNG and data-stream
state) every `checkpoint_every` steps and when it stops, and continues from there when run again.
"""
from __future__ import annotations

import base64
import dataclasses
import json
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
from mambakit.tasks.evaluate import VALIDATION_SAMPLES, VALIDATION_SEED_OFFSET, evaluate_synth, length_limit
from mambakit.tasks.induction_heads import check_induction_heads, induction_heads
from mambakit.tasks.mqar import check_mqar, mqar
from mambakit.tasks.selective_copying import check_selective_copying, selective_copying
from mambakit.train.distributed import resolve_device
from mambakit.train.schedule import build_optimizer, lr_at


@dataclass(frozen=True)
class Task:
    sample: Callable[["SynthConfig", int, int, torch.Generator], tuple[Tensor, Tensor]]
    check_length: Callable[["SynthConfig", int], None]
    answers: Callable[["SynthConfig"], int]     # tokens a scored position can hold: chance = 1/answers
    defaults: dict[str, Any]                    # this task's values of the fields left as None


TASKS: dict[str, Task] = {
    # Table 1's CPU setting: the paper's 16 tokens to copy and vocabulary 16 at length 128 instead
    # of 4096, 6000 steps (Table 1's no-gate rows, half the cost per step, take twice as many; the
    # table then continues each row at 256: experiments.TABLE1_CONTINUE).
    "selective-copying": Task(
        sample=lambda cfg, b, l, g: selective_copying(b, l, cfg.num_tokens, cfg.vocab_size, g),
        check_length=lambda cfg, l: check_selective_copying(l, cfg.num_tokens, cfg.vocab_size),
        answers=lambda cfg: cfg.vocab_size - 2,
        defaults=dict(seq_len=128, num_tokens=16, steps=6000)),
    "induction-heads": Task(
        sample=lambda cfg, b, l, g: induction_heads(b, l, cfg.vocab_size, g),
        check_length=lambda cfg, l: check_induction_heads(l, cfg.vocab_size),
        answers=lambda cfg: cfg.vocab_size - 1,
        defaults=dict(seq_len=64, num_tokens=1, steps=2000)),
    "mqar": Task(
        sample=lambda cfg, b, l, g: mqar(b, l, cfg.num_tokens, cfg.vocab_size,
                                         random_non_queries=cfg.random_fillers, generator=g),
        check_length=lambda cfg, l: check_mqar(l, cfg.num_tokens, cfg.vocab_size),
        answers=lambda cfg: cfg.vocab_size - cfg.vocab_size // 2,
        # Zoology's figure 2 uses vocabulary 8192 and 64 epochs of 100k sequences in batches of
        # 512. At a CPU budget (batch 32, a few thousand steps) the vocabulary decides whether
        # anything is learnt: at L=64 with 4 pairs a Transformer solved it in ~1000 steps with 64
        # ids and stayed at ~27% after 2000 (128 ids) and 5000 (1024 ids). 64 ids hold the 16
        # distinct keys that L=256 (16 pairs, figure 2's longest) needs. Zoology's figure 2 sets
        # the fillers to 0 (random_non_queries=False).
        defaults=dict(seq_len=64, num_tokens=4, steps=2000, vocab_size=64)),
}

# Recipes: named settings of a task's experiment, which SynthConfig.recipe(name, task) starts from.
_PAPER_LENGTHS = tuple(2 ** k for k in range(6, 21))
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # The Mamba paper's induction-heads recipe (§4.1.2 / App. E.1): train at 256, batch 8, Adam at
    # a constant 1e-3, no weight decay, test from 2^6 to 2^20.
    "paper": {
        "induction-heads": dict(seq_len=256, batch_size=8, lr=1e-3, warmup_steps=0, min_lr_ratio=1.0,
                                weight_decay=0.0, steps=50_000, eval_lengths=_PAPER_LENGTHS),
    },
    # What reaches the paper's figure on 2 CPU cores (README: measured): train at 256 (batch 32,
    # cosine 3e-3), where Mamba solves the task after ~1000 steps but holds the answer only to
    # ~4096 tokens, then 200 steps at 8192 (batch 1) that push it to keep it; tested from 2^6 to
    # 2^20 with at most 2^20 tokens per length.
    "cpu": {
        "induction-heads": dict(seq_len=256, steps=2000, then=((8192, 200),), eval_lengths=_PAPER_LENGTHS,
                                eval_max_tokens=2 ** 20, eval_batch_size=16),
    },
}
PAPER_RECIPES = RECIPES["paper"]

# SynthConfig fields a resumed run must share with its checkpoint (steps may grow; evaluation,
# time budget and device may change).
TRAINING_FIELDS = ("task", "model", "d_model", "n_layer", "budget_params", "model_fields", "vocab_size",
                   "num_tokens", "seq_len", "batch_size", "lr", "warmup_steps", "min_lr_ratio",
                   "weight_decay", "grad_clip", "loss_on", "random_fillers", "then", "init_from", "seed")
# SynthConfig fields that make the model itself: an init_from run must share them
MODEL_FIELDS = ("model", "d_model", "n_layer", "budget_params", "model_fields", "vocab_size")
# SynthConfig fields that size the model; model_fields may not restate them.
_SIZE_FIELDS = ("d_model", "n_layer", "vocab_size")
LOSS_ON = ("answers", "all")


@dataclass
class SynthConfig:
    task: str = "selective-copying"
    model: str = "mamba"
    d_model: int = 64                   # the paper's synthetic-task models: 2 layers, d_model 64
    n_layer: int = 2
    budget_params: Optional[int] = None     # size d_model to about this many parameters instead
    model_fields: dict[str, Any] = field(default_factory=dict)  # other config fields, e.g. d_state
    # None: the task's default (TASKS[task].defaults); vocabulary 16 as in the paper
    vocab_size: Optional[int] = None    # every token id, special ones included
    num_tokens: Optional[int] = None    # selective copying: data tokens; mqar: key-value pairs
    seq_len: Optional[int] = None
    steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1           # cosine decay to this fraction of lr; 1.0: constant
    weight_decay: float = 0.0           # fresh data every step: nothing to overfit, nothing to decay
    grad_clip: float = 1.0
    loss_on: str = "answers"            # "answers": scored positions only; "all": next token everywhere
    random_fillers: bool = False        # MQAR: uniform random ids between the queries (Zoology's
                                        # random_non_queries) instead of 0 (its figure 2)
    # after `steps` at seq_len, (length, steps) stages at longer lengths, each batch holding about as
    # many tokens as batch_size x seq_len (at least one sequence): a model whose memory is good
    # enough at seq_len gets no pressure to keep it for longer, and these stages supply it
    then: tuple[tuple[int, int], ...] = ()
    time_budget: Optional[float] = None     # seconds of training; stops early, evaluates what it has
    # stop once a validation batch (its own seed stream) reaches this accuracy at seq_len, checked
    # every stop_check_every steps (Zoology stops at 0.99)
    stop_at: Optional[float] = None
    stop_check_every: int = 100
    checkpoint_dir: Optional[str] = None    # resumable: checkpoints here, continues from the latest
    # start from the weights of an earlier run of the same model: the latest checkpoint in that
    # run's checkpoint_dir (a curriculum: e.g. MQAR learnt at L=64, then trained at 128)
    init_from: Optional[str] = None
    checkpoint_every: int = 500
    eval_lengths: Optional[tuple[int, ...]] = None  # lengths tested besides seq_len; None: 2x and 4x
    eval_samples: int = 256
    eval_batch_size: Optional[int] = None   # None: batch_size
    eval_chunk: int = 8192              # longer sequences are evaluated chunk by chunk, state carried
    eval_max_tokens: Optional[int] = None   # cap samples x length per evaluated length
    max_attention_eval_len: int = 16384     # attention models are not run past this (quadratic)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {sorted(TASKS)}")
        model_class(self.model)
        defaults = {"vocab_size": 16, **TASKS[self.task].defaults}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("d_model", "n_layer", "vocab_size", "num_tokens", "seq_len", "steps",
                     "batch_size", "eval_samples", "checkpoint_every", "eval_chunk", "max_attention_eval_len",
                     "stop_check_every"):
            require_int(f"SynthConfig.{name}", getattr(self, name), 1)
        for name in ("eval_batch_size", "eval_max_tokens", "budget_params"):
            if getattr(self, name) is not None:
                require_int(f"SynthConfig.{name}", getattr(self, name), 1)
        require_int("SynthConfig.warmup_steps", self.warmup_steps, 0)
        require_int("SynthConfig.seed", self.seed, 0)
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SynthConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1 or self.weight_decay < 0:
            raise ValueError("SynthConfig.min_lr_ratio must be in [0, 1] and weight_decay >= 0")
        if self.stop_at is not None and not 0 < self.stop_at <= 1:
            raise ValueError(f"SynthConfig.stop_at is an accuracy in (0, 1], got {self.stop_at}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"SynthConfig.time_budget must be > 0 seconds, got {self.time_budget}")
        if self.random_fillers and self.task != "mqar":
            raise ValueError(f"SynthConfig.random_fillers is an MQAR setting, not one of {self.task}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"SynthConfig.loss_on must be one of {list(LOSS_ON)}, got {self.loss_on!r}")
        if self.budget_params is not None and self.model_fields:
            raise ValueError("budget_params sizes the model itself; it cannot be combined with model_fields")
        clash = sorted(set(self.model_fields) & set(_SIZE_FIELDS))
        if clash:
            raise ValueError(f"model_fields may not set {clash}: use the SynthConfig fields of the same name")
        self.then = tuple((int(length), int(steps)) for length, steps in self.then)
        for length, steps in self.then:
            require_int("SynthConfig.then length", length, 1)
            require_int("SynthConfig.then steps", steps, 1)
            TASKS[self.task].check_length(self, length)
        if self.eval_lengths is None:
            self.eval_lengths = (2 * self.seq_len, 4 * self.seq_len)
        self.eval_lengths = tuple(self.eval_lengths)
        for length in (self.seq_len, *self.eval_lengths):
            TASKS[self.task].check_length(self, length)

    @classmethod
    def recipe(cls, name: str, task: str, **overrides: Any) -> "SynthConfig":
        """RECIPES[name]'s settings for `task`, with `overrides` on top."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        if task not in RECIPES[name]:
            raise ValueError(f"no {name} recipe for {task!r}; there is one for {sorted(RECIPES[name])}")
        return cls(task=task, **{**RECIPES[name][task], **overrides})

    @classmethod
    def paper(cls, task: str, **overrides: Any) -> "SynthConfig":
        """The paper's recipe for `task`, with `overrides` on top."""
        return cls.recipe("paper", task, **overrides)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Every evaluated length, the training length first, each once."""
        return tuple(dict.fromkeys((self.seq_len, *self.eval_lengths)))

    @property
    def total_steps(self) -> int:
        """Optimizer steps in all: `steps` at seq_len, then every `then` stage's."""
        return self.steps + sum(steps for _, steps in self.then)

    def batch_shape(self, step: int) -> tuple[int, int]:
        """(batch size, length) of training step `step` (0-based)."""
        done = self.steps
        if step < done:
            return self.batch_size, self.seq_len
        for length, steps in self.then:
            done += steps
            if step < done:
                return max(1, self.batch_size * self.seq_len // length), length
        raise ValueError(f"step {step} is past the run's {self.total_steps} steps")

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    @property
    def chance(self) -> float:
        return 1.0 / TASKS[self.task].answers(self)

    def sample(self, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """inputs (b, l), targets (b, l) of this config's task (targets IGNORE_INDEX where unscored)."""
        return TASKS[self.task].sample(self, batch_size, seq_len, generator)


# Config fields each synthetic task gives a model unless model_fields says otherwise. GPT-2's
# N(0, 0.02) token embedding kept our 2-layer d_model-64 Transformer at chance on induction heads
# (L=64, 2000 steps, 4 heads, RoPE or learned positions, SwiGLU or GELU alike) where N(0, 1) solved
# it in 500-750 steps, as a plain torch.nn.TransformerEncoder (whose embedding is N(0, 1)) did.
# MQAR is the other way round: with N(0, 1) the loss was still 3.25 after 750 steps at vocabulary
# 64 (0.39 with 0.02; solved by 1000) and stuck at chance over the values at vocabulary 1024.
_UNIT_EMBEDDING = {"transformer": {"embedding_init_std": 1.0}}
SYNTH_MODEL_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "induction-heads": _UNIT_EMBEDDING, "selective-copying": _UNIT_EMBEDDING, "mqar": {}}


def build_synth_model(cfg: SynthConfig) -> LanguageModel:
    """A freshly initialised model for `cfg`, the same weights for the same seed."""
    defaults = SYNTH_MODEL_FIELDS[cfg.task].get(cfg.model, {})
    with torch.random.fork_rng(devices=[]):         # seed the init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        if cfg.budget_params is not None:
            sized = size_family(cfg.model, cfg.budget_params, cfg.vocab_size, cfg.n_layer)
            return from_config(dataclasses.replace(sized, **defaults))
        return build(cfg.model, None, d_model=cfg.d_model, n_layer=cfg.n_layer,
                     vocab_size=cfg.vocab_size, **{**defaults, **cfg.model_fields})


def task_logits(model: LanguageModel, inputs: Tensor, vocab_size: int) -> Tensor:
    """(b, l) -> (b, l, vocab_size): the padded vocabulary entries are never an answer."""
    return model(inputs)[..., :vocab_size]


def loss_targets(inputs: Tensor, targets: Tensor, loss_on: str) -> Tensor:
    """The labels the loss sees: the scored answers only, or (as H3's generators) the next token at
    every position, with the answers where they are scored."""
    if loss_on == "answers":
        return targets
    following = torch.cat([inputs[:, 1:], torch.full_like(inputs[:, :1], IGNORE_INDEX)], dim=1)
    return torch.where(targets != IGNORE_INDEX, targets, following)


@dataclass
class TrainState:
    """Where a synth run is: steps done, their losses, training seconds spent, data-stream state."""

    step: int
    losses: list[float]
    seconds: float
    generator: torch.Generator
    reached: bool = False       # stopped at cfg.stop_at

    def to_json(self) -> dict:
        return {"synth_step": self.step, "losses": self.losses, "seconds": self.seconds,
                "generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode()}

    def restore(self, saved: dict) -> None:
        self.step, self.losses, self.seconds = saved["synth_step"], saved["losses"], saved["seconds"]
        raw = base64.b64decode(saved["generator"])
        self.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def _checkpoint(cfg: SynthConfig, model: LanguageModel, optimizer, state: TrainState) -> None:
    from mambakit.train.checkpoint import gather_state, write_checkpoint

    model_state, optim_state = gather_state(model, optimizer)
    write_checkpoint(cfg.checkpoint_dir, state.step, model_state, optim_state, model,
                     {**state.to_json(), "synth_config": dataclasses.asdict(cfg)})


def _resume(cfg: SynthConfig, model: LanguageModel, optimizer, state: TrainState) -> bool:
    """Continue from cfg.checkpoint_dir's latest checkpoint, if there is one; whether there was."""
    from mambakit.train.checkpoint import latest_checkpoint, load_checkpoint

    latest = latest_checkpoint(cfg.checkpoint_dir)
    if latest is None:
        return False
    saved = load_checkpoint(latest, model, optimizer, model)
    # as JSON (tuples read back as lists); a field newer than the checkpoint has its default there
    mine = _as_json(cfg)
    theirs = {**_as_json(SynthConfig(task=cfg.task)), **saved.get("synth_config", {})}
    differ = sorted(k for k in TRAINING_FIELDS if mine[k] != theirs[k])
    if differ:
        raise ValueError(f"{latest} is a run with other settings ({', '.join(differ)}); "
                         f"use another checkpoint folder")
    state.restore(saved)
    return True


def _as_json(cfg: SynthConfig) -> dict:
    """cfg's fields as a checkpoint holds them (tuples read back as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def start_from(cfg: SynthConfig, model: LanguageModel) -> None:
    """Load the weights of cfg.init_from's latest checkpoint, a run of the same model."""
    from mambakit.io.files import WEIGHTS_NAME, read_safetensors
    from mambakit.io.weights import load_state_into
    from mambakit.train.checkpoint import STATE_NAME, latest_checkpoint

    latest = latest_checkpoint(cfg.init_from)
    if latest is None:
        raise ValueError(f"init_from {cfg.init_from}: no checkpoint there (give the checkpoint folder of an "
                         f"earlier synth run)")
    saved = json.loads((latest / STATE_NAME).read_text(encoding="utf-8")).get("synth_config", {})
    mine = _as_json(cfg)
    differ = sorted(k for k in MODEL_FIELDS if mine[k] != saved.get(k, mine[k]))
    if differ:
        raise ValueError(f"init_from {latest} trained another model ({', '.join(f'{k}={saved[k]!r}' for k in differ)}); "
                         f"this run is {', '.join(f'{k}={mine[k]!r}' for k in differ)}")
    load_state_into(model, read_safetensors(latest / WEIGHTS_NAME), str(latest))


def reached_target(model: LanguageModel, cfg: SynthConfig, step: int) -> bool:
    """At a check step, whether the validation batch's accuracy at seq_len is cfg.stop_at or more."""
    if cfg.stop_at is None or step == 0 or step % cfg.stop_check_every:
        return False
    check = evaluate_synth(model, cfg, cfg.seq_len, stream=VALIDATION_SEED_OFFSET,
                           samples=min(cfg.eval_samples, VALIDATION_SAMPLES))
    return check["token_accuracy"] >= cfg.stop_at


def train_synth(model: LanguageModel, cfg: SynthConfig,
                on_progress: Optional[Callable[[int, int, float], None]] = None) -> TrainState:
    """AdamW with warmup + cosine (or constant) on fresh batches until cfg.total_steps, cfg.time_budget
    or cfg.stop_at; calls on_progress(step, steps, loss) after each step. Returns the run's TrainState."""
    limit = length_limit(model)
    longest = max([cfg.seq_len] + [length for length, _ in cfg.then])
    if limit is not None and longest > limit:
        raise ValueError(f"training length {longest} is past the model's max_seq_len {limit}")
    device = model.device
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    state = TrainState(0, [], 0.0, seeded(cfg.seed))
    resumed = cfg.checkpoint_dir is not None and _resume(cfg, model, optimizer, state)
    if cfg.init_from is not None and not resumed:      # a resumed run has its own weights already
        start_from(cfg, model)
    model.train()
    started = time.perf_counter() - state.seconds
    try:
        total = cfg.total_steps
        # a resumed run that had stopped at its target stops again: it stopped at a check step
        state.reached = reached_target(model, cfg, state.step)
        while state.step < total and not state.reached:
            if cfg.time_budget is not None and time.perf_counter() - started >= cfg.time_budget:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state.step, cfg.lr, cfg.warmup_steps, total, cfg.min_lr_ratio)
            inputs, targets = cfg.sample(*cfg.batch_shape(state.step), state.generator)
            labels = loss_targets(inputs, targets, cfg.loss_on)
            logits = task_logits(model, inputs.to(device), cfg.vocab_size)              # (b, l, v)
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), labels.to(device).reshape(-1),
                                   ignore_index=IGNORE_INDEX)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {state.step + 1}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            state.step += 1
            state.losses.append(value)
            state.seconds = time.perf_counter() - started
            if on_progress is not None:
                on_progress(state.step, total, value)
            if cfg.checkpoint_dir is not None and state.step % cfg.checkpoint_every == 0:
                _checkpoint(cfg, model, optimizer, state)
            state.reached = reached_target(model, cfg, state.step)
    finally:           # also on Ctrl-C: the run continues from here next time
        if cfg.checkpoint_dir is not None and state.step and state.step % cfg.checkpoint_every:
            _checkpoint(cfg, model, optimizer, state)
    return state


def run_synth(cfg: SynthConfig, on_progress: Optional[Callable[[int, int, float], None]] = None,
              on_eval: Optional[Callable[[dict], None]] = None) -> dict:
    """Build, train and evaluate one model on `cfg.task`; returns a JSON-ready results dict.
    `on_eval(result)` is called after each evaluated length."""
    model = build_synth_model(cfg).to(resolve_device(cfg.device))
    state = train_synth(model, cfg, on_progress)
    losses = state.losses
    tail = losses[-max(1, len(losses) // 10):]       # the last tenth: a less noisy final loss
    start = time.perf_counter()
    evals = []
    for length in cfg.lengths:
        evals.append(evaluate_synth(model, cfg, length))
        if on_eval is not None:
            on_eval(evals[-1])
    return {"task": cfg.task, "model": cfg.model, "parameters": model.num_parameters(),
            "config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
            "chance": cfg.chance,
            "steps_done": state.step, "stopped_early": state.step < cfg.total_steps,
            "reached_stop_at": state.reached,
            "final_loss": sum(tail) / len(tail) if tail else None, "train_seconds": state.seconds,
            "eval_seconds": time.perf_counter() - start, "losses": losses, "eval": evals}
