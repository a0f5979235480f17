"""Pre-norm residual block around any mixer: x + mixer(norm(x)), residual optionally kept in fp32."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, norm: nn.Module, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.residual_in_fp32 = residual_in_fp32

    def _add(self, residual: Tensor, update: Tensor) -> Tensor:
        if self.residual_in_fp32:
            return residual.float() + update.float()
        return residual + update.to(residual.dtype)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self._add(x, self.mixer(self.norm(x).to(self.mixer_dtype), *args, **kwargs))

    def step(self, x: Tensor, state) -> Tensor:
        return self._add(x, self.mixer.step(self.norm(x).to(self.mixer_dtype), state))

    @property
    def mixer_dtype(self) -> torch.dtype:
        # The norm is cast with the mixer; reading its weight is much cheaper than walking
        # mixer.parameters() twice per layer per decoded token.
        return self.norm.weight.dtype
