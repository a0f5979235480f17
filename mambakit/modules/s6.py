"""S6 as a layer by itself: the selective SSM without the Mamba block around it.

The Mamba paper's Table 1 separates the architecture from the inner sequence layer; its "S6, no
gate" row is this layer: over the d_model channels directly (no in_proj expansion, no causal conv,
no y·SiLU(z) gate), Δ, B, C = s_Δ(x), s_B(x), s_C(x) (Broadcast(Linear) + softplus), A from A_log,
skip D — the same selection and initialisation as the Mamba mixer (mamba_ssm names) — then the
output head of S4's layers (`ssm_output`, "linear" by default: no gate).

Glossary: b batch, l length, d = d_model channels, n = d_state, r = dt_rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.modules.mamba import init_dt_proj, selective_ssm, ssm_params
from mambakit.modules.ssm_output import apply_output, make_out_proj
from mambakit.ops import selective_state_update


@dataclass
class S6State:
    """Recurrent state of one S6 layer: ssm (b, d, n) fp32, fixed in l."""

    ssm: Tensor

    def clone(self) -> "S6State":
        return S6State(self.ssm.clone())


class S6Mixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, dt_rank: int = 4, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 output: str = "linear"):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.x_proj = nn.Linear(d_model, dt_rank + 2 * d_state, bias=False)   # s_Δ (low rank), s_B, s_C
        self.dt_proj = nn.Linear(dt_rank, d_model, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_model, 1))
        self.D = nn.Parameter(torch.ones(d_model))
        self.out_proj = make_out_proj(d_model, output)
        init_dt_proj(self.dt_proj, dt_scale, dt_min, dt_max, dt_init_floor)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S6State:
        return S6State(torch.zeros(batch_size, self.d_model, self.d_state, device=device or self.D.device))

    def forward(self, hidden: Tensor, state: Optional[S6State] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d) -> (b, l, d); `state` is the initial state, replaced by the final one."""
        dt, B, C = ssm_params(self.x_proj, self.dt_proj, hidden, self.d_state)   # (b, l, d), (b, l, n) x2
        mask = None if attention_mask is None else attention_mask[:, None, :].to(hidden.dtype)
        y, last = selective_ssm(hidden.transpose(1, 2), dt.transpose(1, 2), B.transpose(1, 2),
                                C.transpose(1, 2), self.A_log, self.D, self.dt_proj.bias, mask=mask,
                                initial_state=None if state is None else state.ssm)   # (b, d, l)
        if state is not None:
            state.ssm = last
        return apply_output(y.transpose(1, 2), self.out_proj)          # (b, l, d)

    def step(self, hidden: Tensor, state: S6State) -> Tensor:
        """One token: hidden (b, d) -> (b, d), updating `state`. O(1) in l."""
        dt, B, C = ssm_params(self.x_proj, self.dt_proj, hidden, self.d_state)
        y, state.ssm = selective_state_update(state.ssm, hidden, dt, -torch.exp(self.A_log.float()), B, C, self.D,
                                              dt_bias=self.dt_proj.bias, dt_softplus=True)
        return apply_output(y, self.out_proj)
