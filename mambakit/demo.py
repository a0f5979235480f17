"""The experiment behind `mambakit demo`: equal-size Mamba, Transformer and RNN trained on the same
corpus and token budget, then measured side by side (bits/byte, training tokens/s, decode latency
at short and long context, peak memory) with a sample from each."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from mambakit.data import load_tokenizer
from mambakit.data.tokens import load_splits
from mambakit.io.atomic import atomic_write_text
from mambakit.models import REGISTRY, from_config
from mambakit.models.budget import configs_for_budget
from mambakit.perf import decode_latency_curve
from mambakit.train.loop import TrainConfig, train
from mambakit.train.memory import PeakMemory


@dataclass
class CompareConfig:
    models: tuple[str, ...] = ("mamba", "transformer", "gru")
    budget_params: int = 500_000
    steps: int = 700                   # same token budget for every model...
    time_budget_s: float = 120.0       # ...unless a model runs out of time first (~4 min in all)
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 20
    eval_batches: int = 16
    max_bytes: int = 4_000_000
    # Out to 2^14: where a small Transformer's KV cache finally shows in its per-token cost.
    contexts: tuple[int, ...] = (64, 1024, 4096, 16384)
    decode_tokens: int = 8
    sample_tokens: int = 160
    prompt: str = "def "
    seed: int = 0
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> "CompareConfig":
        """About a minute in all: for a first look and for tests."""
        fields = dict(steps=60, time_budget_s=15.0, batch_size=4, seq_len=128, eval_batches=4,
                      max_bytes=1_000_000, contexts=(64, 1024), sample_tokens=80, budget_params=150_000)
        return cls(**{**fields, **overrides})


@dataclass
class ModelReport:
    name: str
    parameters: int
    steps: int
    train_tokens: int
    train_tokens_per_s: float
    val: dict
    decode_ms: dict[int, Optional[float]]
    peak_memory_mb: float
    sample: str
    history: list[dict] = field(default_factory=list)


def equal_size_configs(names: tuple[str, ...], budget_params: int, vocab_size: int) -> dict:
    """Configs of about `budget_params` parameters for each of `names` (the registry's sizing)."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {sorted(REGISTRY)}")
    return configs_for_budget(budget_params, vocab_size=vocab_size, names=names)


def compare(cfg: CompareConfig, out_dir: str | Path = "runs/demo",
            on_model: Optional[Callable[[str, int], None]] = None) -> list[ModelReport]:
    """Train and measure every model of `cfg.models`; results, plots and checkpoints go to out_dir.
    `on_model(name, parameters)` is called as each model starts (for a caller's progress line)."""
    from mambakit.plots.training import plot_latency_vs_context, plot_loss_curves

    out = Path(out_dir)
    tokenizer = load_tokenizer()
    configs = equal_size_configs(cfg.models, cfg.budget_params, tokenizer.vocab_size)  # bad names fail first
    train_data, val_data = load_splits(tokenizer, None, out / "data", max_bytes=cfg.max_bytes)
    reports = []
    for name, config in configs.items():
        torch.manual_seed(cfg.seed)
        model = from_config(config)
        if on_model is not None:
            on_model(name, model.num_parameters())
        tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                           warmup_steps=cfg.warmup_steps, eval_every=max(1, cfg.steps // 4),
                           eval_batches=cfg.eval_batches, seed=cfg.seed, device="cpu",
                           time_budget_s=cfg.time_budget_s, progress=cfg.progress)
        with PeakMemory() as mem:
            result = train(model, train_data, val_data, tcfg)
        model.save_pretrained(out / name)
        try:   # one growing cache per model: a single prefill out to the longest context
            latency = decode_latency_curve(model, cfg.contexts, cfg.decode_tokens, cfg.seed)
        except ValueError:   # beyond what the model can hold (e.g. a learned position table)
            latency = {context: None for context in cfg.contexts}
        ids = torch.tensor([tokenizer.encode(cfg.prompt)])
        new = model.generate(ids, max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=40,
                             seed=cfg.seed)[0, ids.shape[1]:]
        reports.append(ModelReport(name, model.num_parameters(), result.steps,
                                   result.steps * cfg.batch_size * cfg.seq_len, result.tokens_per_s,
                                   result.final_eval, latency, mem.delta_bytes / 2**20,
                                   cfg.prompt + tokenizer.decode(new.tolist()), result.history))
    plot_loss_curves(reports, out / "loss_curves.png")
    plot_latency_vs_context(reports, out / "latency_vs_context.png")
    atomic_write_text(out / "results.json", json.dumps(
        {"config": asdict(cfg), "models": [asdict(r) for r in reports]}, indent=2) + "\n")
    return reports
