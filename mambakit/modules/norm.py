"""RMSNorm (Zhang & Sennrich 2019), as used between Mamba blocks, and Mamba-2's gated, grouped RMSNorm."""
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


class RMSNormGated(nn.Module):
    """Mamba-2's output norm: RMSNorm(y · SiLU(z)) (or RMSNorm(y) · SiLU(z) when norm_before_gate),
    normalised over groups of `group_size` channels so each B/C group (a tensor-parallel shard in
    mamba_ssm) is normalised on its own."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False):
        super().__init__()
        self.eps, self.norm_before_gate = eps, norm_before_gate
        self.group_size = group_size or d
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor | None = None) -> Tensor:
        """y, z (..., d) -> (..., d) in y's dtype; computed in fp32."""
        x = y.float()
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.float())
        groups = x.unflatten(-1, (-1, self.group_size))                     # (..., d/gs, gs)
        x = F.rms_norm(groups, (self.group_size,), None, self.eps).flatten(-2) * self.weight.float()
        if z is not None and self.norm_before_gate:
            x = x * F.silu(z.float())
        return x.to(y.dtype)


def make_norm(d: int, eps: float, rms: bool) -> nn.Module:
    return RMSNorm(d, eps) if rms else nn.LayerNorm(d, eps=eps)
