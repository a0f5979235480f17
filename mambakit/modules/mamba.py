"""The Mamba mixer (Gu & Dao 2023, Fig. 3): in_proj → causal conv1d → SiLU → S6 → gate → out_proj.

Glossary: b batch, l length, d_model width of the residual stream, d_in = expand·d_model channels
of the SSM, n = d_state, r = dt_rank, k = d_conv. Parameter names and initialisation follow
mamba_ssm, so its checkpoints load key for key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.config import MambaConfig
from mambakit.modules.linear import PackedLinear
from mambakit.modules.norm import RMSNorm
from mambakit.ops import causal_conv1d, causal_conv1d_step, selective_scan, selective_state_update
from mambakit.ops.block_step_cpu import MambaBlockStep
from mambakit.ops.cpu_kernels import available as step_kernels_available
from mambakit.ops.linear import WEIGHT_DTYPES, dequantize
from mambakit.ops.mamba_inner import MAX_D_CONV, mamba_inner, mamba_inner_continue
from mambakit.ops.step_cpu import MAX_GEMV_ROWS


def fp32_weight(linear: nn.Module) -> Tensor:
    """A projection's weight as fp32 (out, in): an fp32 weight itself (gradients and ties intact),
    a bf16 or int8 one (PackedLinear) dequantized, as ops.linear does for long inputs."""
    return dequantize(linear.weight, getattr(linear, "scale", None), torch.float32).contiguous()


@dataclass
class MambaState:
    """Recurrent state of one mixer: conv (b, d_in, k-1) recent inputs, ssm (b, d_in, n) fp32."""

    conv: Tensor
    ssm: Tensor

    def clone(self) -> "MambaState":
        return MambaState(self.conv.clone(), self.ssm.clone())


@torch.no_grad()
def init_dt_proj(dt_proj: nn.Linear, dt_scale: float, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """Δ's projection starts so that softplus(bias) ~ log-uniform[dt_min, dt_max] (mamba_ssm)."""
    std = dt_proj.in_features ** -0.5 * dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    d = dt_proj.out_features
    dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))              # inverse of softplus
    dt_proj.bias._no_reinit = True


def ssm_params(x_proj: nn.Linear, dt_proj: nn.Linear, x: Tensor, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """S6's selection: x (..., d) -> Δ before bias/softplus (..., d), B (..., n), C (..., n)."""
    dt, B, C = x_proj(x).split([dt_proj.in_features, d_state, d_state], dim=-1)
    return F.linear(dt, dt_proj.weight), B, C


def selective_ssm(x: Tensor, dt: Tensor, B: Tensor, C: Tensor, A_log: Tensor, D: Tensor, dt_bias: Tensor,
                  z: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None, reset: Optional[Tensor] = None,
                  backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The S6 layer on projected inputs: x, dt (b, d, l), B, C (b, n, l) -> (y (b, d, l), h (b, d, n)).

    `mask` (b, 1, l), 0 on left padding: Δ = 0 there makes Ā = 1 and B̄ = 0, so the state passes
    through pads untouched.
    """
    A = -torch.exp(A_log.float())                                      # (d, n)
    if mask is None:
        delta, delta_bias, softplus = dt, dt_bias.float(), True
    else:
        delta = F.softplus(dt.float() + dt_bias.float()[:, None]) * mask
        delta_bias, softplus = None, False
    return selective_scan(x, delta, A, B, C, D.float(), z=z, delta_bias=delta_bias, delta_softplus=softplus,
                          return_last_state=True, initial_state=initial_state, reset=reset, backend=backend)


class MambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner, self.d_state, self.dt_rank = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.d_conv = cfg.d_conv
        self.scan_backend = "auto"
        d_in, n, r = self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(cfg.d_model, 2 * d_in, bias=cfg.bias)
        self.conv1d = nn.Conv1d(d_in, d_in, cfg.d_conv, groups=d_in, padding=cfg.d_conv - 1,
                                bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_in, r + 2 * n, bias=False)      # s_Δ (low rank), s_B, s_C
        self.dt_proj = nn.Linear(r, d_in, bias=True)              # Broadcast_D(Linear_r(x))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_in, 1))
        self.D = nn.Parameter(torch.ones(d_in))
        self.out_proj = nn.Linear(d_in, cfg.d_model, bias=cfg.bias)
        init_dt_proj(self.dt_proj, cfg.dt_scale, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)

    # ------------------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        return MambaState(torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch_size, self.d_inner, self.d_state, device=device))

    def _ssm_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return ssm_params(self.x_proj, self.dt_proj, x, self.d_state)

    def forward(self, hidden: Tensor, state: Optional[MambaState] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model).

        `state`, if given, is the carried recurrent state: used as the initial state and replaced
        in place by the final one (prefill and chunked continuation). `attention_mask` (b, l), 0 on
        left padding, keeps pad tokens out of both states. `reset` (b, l) marks packed documents.
        """
        b, l, _ = hidden.shape
        xz = self.in_proj(hidden)                                      # (b, l, 2 d_in)
        if attention_mask is None and reset is None and self._fused_inner_applies(xz, state):
            weights = (self.conv1d.weight[:, 0, :], self.conv1d.bias, fp32_weight(self.x_proj),
                       fp32_weight(self.dt_proj), self.dt_proj.bias, self.A_log, self.D,
                       fp32_weight(self.out_proj), self.out_proj.bias)
            if state is None:
                return mamba_inner(xz, *weights)                               # (b, l, d_model)
            out, state.conv, state.ssm = mamba_inner_continue(xz, *weights, state.conv.contiguous(),
                                                              state.ssm.contiguous())
            return out
        x, z = xz.chunk(2, dim=-1)                                     # (b, l, d_in) each
        x, z = x.transpose(1, 2), z.transpose(1, 2)                    # (b, d_in, l)
        mask = None if attention_mask is None else attention_mask[:, None, :].to(x.dtype)
        if mask is not None:
            x = x * mask                                               # pads never enter the conv state
        x, conv_state = causal_conv1d(x, self.conv1d.weight[:, 0, :], self.conv1d.bias,
                                      None if state is None else state.conv, reset)
        x = F.silu(x)                                                  # (b, d_in, l)
        dt, B, C = self._ssm_params(x.transpose(1, 2))                 # (b, l, d_in), (b, l, n) x2
        y, last = selective_ssm(x, dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2), self.A_log,
                                self.D, self.dt_proj.bias, z, mask,
                                None if state is None else state.ssm, reset, self.scan_backend)  # (b, d_in, l)
        if state is not None:
            state.conv, state.ssm = conv_state, last
        return self.out_proj(y.transpose(1, 2))                        # (b, l, d_model)

    def _fused_inner_applies(self, xz: Tensor, state: Optional[MambaState] = None) -> bool:
        """Whether `ops.mamba_inner` (conv → scan → gate → out_proj fused, hand-written backward)
        runs this forward: the CPU kernels, fp32 activations and no autocast (its GEMMs stay fp32),
        the scan not pinned to another backend. Projection weights stored bf16 or int8 (PackedLinear)
        go in dequantized to fp32 when there are more than MAX_GEMV_ROWS rows, where ops.linear
        dequantizes them too (fewer rows keep the decode GEMV's arithmetic, e.g. int8 weights times
        q8_0-quantized activations, so short inputs equal step()). With a carried `state`
        (chunked prefill, generation) the fused forward continues from it: inference only, fp32
        states. Otherwise the unfused ops below run (its twin; tests compare them)."""
        if state is not None and (torch.is_grad_enabled() or state.conv.dtype != torch.float32
                                  or state.ssm.dtype != torch.float32):
            return False
        projections = (self.x_proj, self.dt_proj, self.out_proj)
        return (self.scan_backend in ("auto", "cpu") and xz.device.type == "cpu" and xz.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and xz.shape[0] * xz.shape[1] > 0
                and self.d_conv <= MAX_D_CONV
                and all(m.weight.dtype == torch.float32 and getattr(m, "scale", None) is None
                        or m.weight.dtype in WEIGHT_DTYPES and xz.shape[0] * xz.shape[1] > MAX_GEMV_ROWS
                        for m in projections)
                and all(t is None or t.dtype == torch.float32 for t in (self.dt_proj.bias, self.out_proj.bias))
                and all(t.dtype == torch.float32 for t in (self.conv1d.weight, self.A_log, self.D))
                and step_kernels_available(xz.device) is None)

    def step(self, hidden: Tensor, state: MambaState) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model), updating `state`. O(1) in l."""
        xz = self.in_proj(hidden)                                      # (b, 2 d_in)
        d_in, n, r = self.d_inner, self.d_state, self.dt_rank
        backend = self.step_backend
        x, state.conv = causal_conv1d_step(xz[:, :d_in], state.conv, self.conv1d.weight[:, 0, :],
                                           self.conv1d.bias, activation="silu", backend=backend)
        x_dbl = self.x_proj(x)                                         # (b, r + 2n)
        dt = F.linear(x_dbl[:, :r], self.dt_proj.weight)               # (b, d_in)
        # B, C and z stay views into the matmul outputs: the fused backend reads them in place.
        y, state.ssm = selective_state_update(
            state.ssm, x, dt, -torch.exp(self.A_log.float()), x_dbl[:, r:r + n], x_dbl[:, r + n:],
            self.D, z=xz[:, d_in:], dt_bias=self.dt_proj.bias, dt_softplus=True, backend=backend)
        return self.out_proj(y)

    def fused_block_step(self, residual: Tensor, norm: nn.Module, state: MambaState) -> Optional[Tensor]:
        """Block.step (residual + step(norm(residual))) in one compiled call, updating `state`,
        when it applies: the CPU kernels, no autograd, an RMSNorm, fp32 residual and states, at most
        MAX_GEMV_ROWS rows, fp32 parameters but the projections' weights (any `ops.linear` format).
        Otherwise None, and Block.step runs the unfused ops (the twin; tests compare them)."""
        fused = self.fused_block_for(residual, norm, state)
        if fused is None:
            return None
        residual, state.conv, state.ssm = fused(residual.contiguous(), state.conv.contiguous(),
                                                state.ssm.contiguous(), self.step_threads())
        return residual

    def fused_block_for(self, residual: Tensor, norm: nn.Module, state: MambaState) -> Optional[MambaBlockStep]:
        """The MambaBlockStep that fused_block_step (and MambaLM's whole-model step) runs for this
        residual, norm and state, or None when the fused path does not apply (see fused_block_step)."""
        if (torch.is_grad_enabled() or self.step_backend == "ref" or residual.device.type != "cpu"
                or residual.dtype != torch.float32 or not 1 <= residual.shape[0] <= MAX_GEMV_ROWS
                or state.conv.dtype != torch.float32 or not isinstance(norm, RMSNorm)):
            return None
        return self._fused_for(norm)

    def step_threads(self) -> int:
        """Threads for the fused step: torch's, or 1 for blocks whose in_proj is too small to be worth
        a second thread (the barriers between the stages would cost more than the split saves)."""
        return torch.get_num_threads() if 2 * self.d_inner * self.in_proj.in_features >= 1 << 17 else 1

    def _fused_for(self, norm: RMSNorm) -> Optional[MambaBlockStep]:
        """The MambaBlockStep of the current weights (rebuilt when a tensor or A_log changed), or
        None when this block's parameters or the machine rule it out."""
        key = (norm.eps, self.__dict__["_parameters"]["A_log"]._version, *_step_key(self, norm))
        if getattr(self, "_fused", (None,))[0] != key:
            projections = [(m.weight, getattr(m, "scale", None), m.bias) for m in (self.in_proj, self.x_proj, self.out_proj)]
            fused = None
            if step_kernels_available(self.A_log.device) is None and all(
                    isinstance(m, (nn.Linear, PackedLinear)) for m in (self.in_proj, self.x_proj, self.out_proj)):
                try:
                    fused = MambaBlockStep(norm.weight, norm.eps, projections[0], self.conv1d.weight[:, 0, :],
                                           self.conv1d.bias, projections[1], self.dt_proj.weight, self.dt_proj.bias,
                                           -torch.exp(self.A_log.detach().float()), self.D, projections[2])
                except ValueError:
                    fused = None       # e.g. bf16 norms or conv (model.to(bfloat16)): the unfused ops
            self._fused = (key, fused)
        return self._fused[1]

    @property
    def step_backend(self) -> str:
        """The decode step ops' backend: "ref" (the specs) when the scan is pinned to its reference,
        else the best one for the device."""
        return "ref" if self.scan_backend == "ref" else "auto"


def _step_key(mixer: MambaMixer, norm: nn.Module) -> list[Optional[int]]:
    """Where every tensor of the modules a MambaBlockStep reads lives (the norm, the mixer's own
    A_log and D, conv1d, dt_proj and the three projections: each one's parameters and buffers, a
    superset of what the step reads), from the modules' own dicts: this runs per layer per decoded
    token, and nn.Module.__getattr__ costs more than the rest of the check."""
    mods = mixer.__dict__["_modules"]
    out = []
    for m in (norm, mixer, mods["conv1d"], mods["dt_proj"], mods["in_proj"], mods["x_proj"], mods["out_proj"]):
        d = m.__dict__
        for t in d["_parameters"].values():
            out.append(t if t is None else t.data_ptr())
        for t in d["_buffers"].values():
            out.append(t if t is None else t.data_ptr())
    return out
