"""RMSNorm (Zhang & Sennrich 2019), as used between Mamba blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 so bf16 activations don't lose the small-variance channels; one fused
        # op (F.rms_norm) rather than six, which matters in the per-token decode loop.
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def make_norm(d: int, eps: float, rms: bool) -> nn.Module:
    return RMSNorm(d, eps) if rms else nn.LayerNorm(d, eps=eps)
