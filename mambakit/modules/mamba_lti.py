"""The Mamba block with an LTI inner layer: in_proj → causal conv1d → SiLU → S4D → y·SiLU(z) → out_proj.

The Mamba paper's Table 1 ablation "Mamba block + S4": the architecture of Mamba with the
selection taken out, so Δ, B, C no longer depend on the input. The inner layer is S4D (diagonal
complex A, ZOH, Vandermonde kernel; `S4DMixer` with no output head), trained as a convolution and
decoded as a recurrence like any LTI layer.

Glossary: b batch, l length, d_in = expand·d_model, n = d_state/2 complex modes, k = d_conv.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.modules.mamba import MambaState
from mambakit.modules.s4 import S4DMixer
from mambakit.ops import causal_conv1d, causal_conv1d_step


class MambaLTIMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, init: str = "lin", conv_bias: bool = True,
                 bias: bool = False):
        super().__init__()
        d_in = self.d_inner = expand * d_model
        self.d_conv = d_conv
        self.in_proj = nn.Linear(d_model, 2 * d_in, bias=bias)
        self.conv1d = nn.Conv1d(d_in, d_in, d_conv, groups=d_in, padding=d_conv - 1, bias=conv_bias)
        self.ssm = S4DMixer(d_in, d_state, dt_min, dt_max, init, output="none")
        self.out_proj = nn.Linear(d_in, d_model, bias=bias)

    @property
    def mode(self) -> str:
        return self.ssm.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.ssm.mode = value

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        device = device or self.in_proj.weight.device
        return MambaState(torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device,
                                      dtype=dtype or self.in_proj.weight.dtype),
                          self.ssm.allocate_state(batch_size, device).ssm)

    def forward(self, hidden: Tensor, state: Optional[MambaState] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model); `state` as in MambaMixer.forward."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                   # (b, l, d_in) each
        x, z = x.transpose(1, 2), z.transpose(1, 2)                    # (b, d_in, l)
        if attention_mask is not None:
            x = x * attention_mask[:, None, :].to(x.dtype)             # pads never enter the conv state
        x, conv_state = causal_conv1d(x, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                      None if state is None else state.conv)
        x = F.silu(x)
        if attention_mask is not None:
            x = x * attention_mask[:, None, :].to(x.dtype)             # nor the SSM's: it stays at zero
        y, last = self.ssm.mix(x.float(), None if state is None else state.ssm)   # (b, d_in, l)
        if state is not None:
            state.conv, state.ssm = conv_state, last
        y = y.to(z.dtype) * F.silu(z)
        return self.out_proj(y.transpose(1, 2))                        # (b, l, d_model)

    def step(self, hidden: Tensor, state: MambaState) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model), updating `state`. O(1) in l."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                   # (b, d_in)
        x, state.conv = causal_conv1d_step(x, state.conv, self.conv1d.weight[:, 0, :], self.conv1d.bias)
        y, state.ssm = self.ssm.mix_step(F.silu(x), state.ssm)
        return self.out_proj(y.to(z.dtype) * F.silu(z))
