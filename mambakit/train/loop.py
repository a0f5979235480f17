"""A compact training loop: AdamW, warmup + cosine, clipping, periodic eval, checkpoints."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    time_budget_s: Optional[float] = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float = 0.0
    final_eval: dict = field(default_factory=dict)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (batch, seq_len), from random windows of a 1-D token tensor."""
    if tokens.numel() < seq_len + 2:
        raise ValueError(f"corpus has {tokens.numel()} tokens, fewer than seq_len+2={seq_len + 2}")
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    window = tokens[idx]                                              # (b, l+1)
    return window[:, :-1], window[:, 1:]


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)                                            # (b, l, v)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, embeddings' 1-D params and the SSM's A_log / D are not weight-decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return param.dim() < 2 or leaf in ("A_log", "D") or "norm" in name


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, batch_size: int = 8, seq_len: int = 256,
             n_batches: int = 8, seed: int = 1234) -> dict:
    """Mean next-token loss (nats), bits per byte (byte-level tokens) and perplexity."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    losses = [float(lm_loss(model, *random_windows(tokens, batch_size, seq_len, g)))
              for _ in range(n_batches)]
    model.train(was_training)
    loss = sum(losses) / len(losses)
    return {"loss": loss, "bits_per_byte": loss / LN2, "perplexity": math.exp(loss)}


def train(model, train_tokens: torch.Tensor, val_tokens: torch.Tensor, cfg: TrainConfig,
          checkpoint_dir: Optional[str | Path] = None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    result = TrainResult(steps=0)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), disable=not cfg.progress, desc="train", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = lm_loss(model, *random_windows(train_tokens, cfg.batch_size, cfg.seq_len, g))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; stopping "
                                     "(lower the learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        result.steps = step + 1
        elapsed = time.perf_counter() - start
        tok_s = result.steps * cfg.batch_size * cfg.seq_len / elapsed
        record = {"step": step + 1, "loss": loss.item(), "lr": lr_at(step, cfg), "tokens_per_s": tok_s}
        if (step + 1) % cfg.eval_every == 0:
            record["val"] = evaluate(model, val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
        result.history.append(record)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:,.0f}")
        if cfg.time_budget_s is not None and elapsed > cfg.time_budget_s:
            break
    bar.close()
    result.tokens_per_s = result.steps * cfg.batch_size * cfg.seq_len / (time.perf_counter() - start)
    result.final_eval = evaluate(model, val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
    if checkpoint_dir is not None:
        model.save_pretrained(checkpoint_dir)
    return result
