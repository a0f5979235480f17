"""Pre-norm residual block around any mixer: x + mixer(norm(x)), residual optionally kept in fp32;
with an `mlp` (mamba_ssm's d_intermediate > 0) then x + mlp(norm2(x)), as mamba_ssm's Block."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, norm: nn.Module, residual_in_fp32: bool = True,
                 mlp: Optional[nn.Module] = None, norm2: Optional[nn.Module] = None):
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.residual_in_fp32 = residual_in_fp32
        if mlp is not None:   # registered only when present: state dicts without an MLP stay as they were
            self.norm2, self.mlp = norm2, mlp

    def _add(self, residual: Tensor, update: Tensor) -> Tensor:
        if self.residual_in_fp32:
            return residual.float() + update.float()
        return residual + update.to(residual.dtype)

    def _mlp(self, x: Tensor) -> Tensor:
        if "mlp" not in self._modules:  # not hasattr: a failed nn.Module lookup raises, per layer per token
            return x
        return self._add(x, self.mlp(self.norm2(x).to(self.mixer_dtype)))

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self._mlp(self._add(x, self.mixer(self.norm(x).to(self.mixer_dtype), *args, **kwargs)))

    def step(self, x: Tensor, state) -> Tensor:
        # A mixer may do its residual step in one fused call (MambaMixer on CPU); None: not here.
        fused = getattr(self.mixer, "fused_block_step", None)
        out = None if fused is None else fused(x, self.norm, state)
        if out is None:
            out = self._add(x, self.mixer.step(self.norm(x).to(self.mixer_dtype), state))
        return self._mlp(out)

    @property
    def mixer_dtype(self) -> torch.dtype:
        # The norm is cast with the mixer; reading its weight is much cheaper than walking
        # mixer.parameters() twice per layer per decoded token.
        return self.norm.weight.dtype
