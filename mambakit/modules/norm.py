"""RMSNorm (Zhang & Sennrich 2019), as used between Mamba blocks, and Mamba-2's gated, grouped RMSNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.ops.mamba2_cpu import rms_norm_gated


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
        """y, z (..., d) -> (..., d) in y's dtype; computed in fp32 (one fused pass per row on CPU
        at inference: ops/mamba2_cpu.py, whose twin rms_norm_gated_ref is the maths)."""
        return rms_norm_gated(y, z, self.weight, self.eps, self.group_size, self.norm_before_gate)


def make_norm(d: int, eps: float, rms: bool) -> nn.Module:
    return RMSNorm(d, eps) if rms else nn.LayerNorm(d, eps=eps)
