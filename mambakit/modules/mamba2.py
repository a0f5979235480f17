"""The Mamba-2 mixer (Dao & Gu 2024, Fig. 6): one in_proj → [z, x, B, C, Δ]; causal conv1d over
x‖B‖C → SiLU; SSD with a scalar A per head; gated RMSNorm with z; out_proj.

Glossary: b batch, l length, d_model residual width, d_in = expand·d_model SSM channels,
h = d_in / headdim heads of p = headdim channels, g = ngroups B/C groups, n = d_state,
k = d_conv. Parameter names and initialisation follow mamba_ssm's Mamba2 module (in_proj, conv1d,
dt_bias, A_log, D, norm, out_proj), so its checkpoints load key for key.

On CPU at inference (prefill) the stages between the two matmuls are three fused passes that read
in_proj's output in place: conv + SiLU (ops/mamba2_cpu.py), the SSD with Δ, D and the gate
(ops/ssd_cpu.py), the gated RMSNorm; each falls back to its PyTorch twin when autograd needs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.config import Mamba2Config
from mambakit.modules.norm import RMSNormGated
from mambakit.ops import causal_conv1d_step, ssd_scan, ssd_step
from mambakit.ops.mamba2_cpu import conv_silu_rows


@dataclass
class Mamba2State:
    """Recurrent state of one mixer: conv (b, conv_dim, k-1) recent x‖B‖C inputs, ssm (b, h, p, n) fp32."""

    conv: Tensor
    ssm: Tensor

    def clone(self) -> "Mamba2State":
        return Mamba2State(self.conv.clone(), self.ssm.clone())


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner, self.d_state, self.d_conv = cfg.d_inner, cfg.d_state, cfg.d_conv
        self.headdim, self.nheads, self.ngroups = cfg.headdim, cfg.nheads, cfg.ngroups
        self.conv_dim, self.chunk_size, self.dt_limit = cfg.conv_dim, cfg.chunk_size, cfg.dt_limit
        self.ssd_backend = "auto"
        d_in, h = self.d_inner, self.nheads

        self.in_proj = nn.Linear(cfg.d_model, d_in + self.conv_dim + h, bias=cfg.bias)  # z, xBC, Δ
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.ones(d_in if cfg.D_has_hdim else h))
        self.norm = (RMSNormGated(d_in, cfg.norm_epsilon, d_in // cfg.ngroups, cfg.norm_before_gate)
                     if cfg.rmsnorm else None)
        self.out_proj = nn.Linear(d_in, cfg.d_model, bias=cfg.bias)
        self._init_ssm(cfg)

    @torch.no_grad()
    def _init_ssm(self, cfg: Mamba2Config) -> None:
        # mamba_ssm: softplus(dt_bias) ~ log-uniform[dt_min, dt_max] floored; A = -U(A_init_range).
        dt = torch.exp(torch.rand(self.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))            # inverse of softplus
        self.A_log.copy_(torch.empty(self.nheads).uniform_(*cfg.A_init_range).log())

    # ------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        return Mamba2State(
            torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device))

    def _D(self) -> Tensor:
        """D as ssd_scan takes it: (h,) or (h, p) when D_has_hdim."""
        return self.D.view(self.nheads, self.headdim) if self.D.numel() == self.d_inner else self.D

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        """y, z (..., d_in) -> out_proj(norm(y, z)) (..., d_model); without the norm z gated in SSD."""
        return self.out_proj(y if self.norm is None else self.norm(y, z))

    def forward(self, hidden: Tensor, state: Optional[Mamba2State] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model).

        `state`, if given, is the carried recurrent state: used as the initial state and replaced
        by the final one (prefill and chunked continuation). `attention_mask` (b, l), 0 on left
        padding, keeps pad tokens out of both states. `reset` (b, l) marks packed documents.
        """
        b, l, _ = hidden.shape
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        # z, xBC and Δ stay views into in_proj's output: the fused CPU kernels read them in place.
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, h], dim=-1)
        mask = None if attention_mask is None else attention_mask[:, :, None].to(xBC.dtype)  # (b, l, 1)
        if mask is not None:
            xBC = xBC * mask                                              # pads never enter the conv state
        xBC, conv_state = conv_silu_rows(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                         None if state is None else state.conv, reset)  # (b, l, conv_dim)
        x, B, C = xBC.split([self.d_inner, g * n, g * n], dim=-1)
        A = -torch.exp(self.A_log.float())                                # (h,)
        if mask is None:
            dt_kwargs = dict(dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit)
        else:
            # Δ = 0 on pads makes Ā = 1 and Δ x Bᵀ = 0: the SSM state passes through untouched.
            dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit) * mask
            dt_kwargs = {}
        y, last = ssd_scan(x.reshape(b, l, h, p), dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n),
                           self.chunk_size, D=self._D(),
                           z=z.reshape(b, l, h, p) if self.norm is None else None,
                           initial_states=None if state is None else state.ssm,
                           return_final_states=True, reset=reset, backend=self.ssd_backend,
                           **dt_kwargs)                                   # (b, l, h, p)
        if state is not None:
            state.conv, state.ssm = conv_state, last
        return self._output(y.reshape(b, l, self.d_inner), z)             # (b, l, d_model)

    def step(self, hidden: Tensor, state: Mamba2State) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model), updating `state`. O(1) in l."""
        b = hidden.shape[0]
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        backend = self.step_backend
        # z, xBC, Δ, x, B and C stay views into the matmul / conv outputs: the fused backends read
        # them in place.
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, h], dim=-1)
        xBC, state.conv = causal_conv1d_step(xBC, state.conv, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                             activation="silu", backend=backend)
        x, B, C = xBC.split([self.d_inner, g * n, g * n], dim=-1)
        y, state.ssm = ssd_step(state.ssm, x.view(b, h, p), dt, -torch.exp(self.A_log.float()),
                                B.view(b, g, n), C.view(b, g, n), D=self._D(),
                                z=z.view(b, h, p) if self.norm is None else None, dt_bias=self.dt_bias,
                                dt_softplus=True, dt_limit=self.dt_limit, backend=backend)  # (b, h, p)
        return self._output(y.reshape(b, self.d_inner), z)

    @property
    def step_backend(self) -> str:
        """The decode step ops' backend: "ref" (the specs) when the SSD is pinned to its reference,
        else the best one for the device."""
        return "ref" if self.ssd_backend == "ref" else "auto"
