"""Learning-rate schedule (linear warmup, cosine decay to a floor) and the AdamW set-up."""
from __future__ import annotations

import math

import torch


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based): a pure function, so resume needs no state."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases (every 1-D parameter) and the SSM's A_log / D are not weight-decayed:
    decay would pull A towards -1 and D towards 0, which is not regularisation."""
    leaf = name.rsplit(".", 1)[-1]
    return param.dim() < 2 or leaf in ("A_log", "D") or "norm" in name


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one pass: on a 130M model it is ~4x faster than
    # the per-tensor loop and allocates no temporaries (CPU and CUDA, torch >= 2.4).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
