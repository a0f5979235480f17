"""RMSNorm (Zhang & Sennrich 2019), as used between Mamba blocks, and Mamba-2's gated, grouped RMSNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.ops.mamba2_cpu import rms_norm_gated

KERNEL_MIN_ROWS = 16  # rows from which RMSNorm runs the one-pass kernel (decode batches stay below)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 so bf16 activations don't lose the small-variance channels. Prefill and
        # training rows go to the gated norm's one-pass kernel (no gate, one group: the same maths,
        # fp32 CPU, differentiable; other dtypes and devices take its twin): F.rms_norm's CPU path
        # made several passes, ~9 ms against ~1.8 ms per (2048, 768) block input on one Zen 3 core
        # (interleaved medians), ~3% of a 130M Mamba-2 prefill. A few rows (the per-token decode
        # loop) keep the one torch op, whose call costs less than the kernel's checks.
        if x.numel() >= KERNEL_MIN_ROWS * x.shape[-1]:
            return rms_norm_gated(x, None, self.weight, self.eps, x.shape[-1])
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
