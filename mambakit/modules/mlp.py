"""Position-wise feed-forward layers: the Transformer's (SwiGLU, Shazeer 2020, or GELU, GPT-2), and
mamba_ssm's GatedMLP, which a MixerModel puts after each mixer when d_intermediate > 0."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.config.transformer import MLP_KINDS


class MLP(nn.Module):
    """out_proj(act(in_proj(x))); for SwiGLU in_proj yields gate and value halves: silu(g) * u."""

    def __init__(self, d_model: int, d_ff: int, kind: str = "swiglu", bias: bool = False):
        super().__init__()
        if kind not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {list(MLP_KINDS)}, got {kind!r}")
        self.gated = kind == "swiglu"
        self.in_proj = nn.Linear(d_model, (2 if self.gated else 1) * d_ff, bias=bias)
        self.out_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.in_proj(x)                                     # (b, l, d_ff or 2 d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.out_proj(h)                                 # (b, l, d_model)


GATED_MLP_MULTIPLE_OF = 128   # mamba_ssm's GatedMLP `multiple_of` default


def gated_mlp_hidden(d_intermediate: int) -> int:
    """The hidden width mamba_ssm's GatedMLP builds for `d_intermediate`: rounded up to a multiple of 128."""
    return -(-d_intermediate // GATED_MLP_MULTIPLE_OF) * GATED_MLP_MULTIPLE_OF


class GatedMLP(nn.Module):
    """mamba_ssm's GatedMLP (modules/mlp.py), kept apart from MLP for its checkpoint layout: fc1
    (d_model -> 2·hidden) split into [y, gate] (value first), y · SiLU(gate), fc2 (hidden -> d_model)."""

    def __init__(self, d_model: int, d_intermediate: int):
        super().__init__()
        hidden = gated_mlp_hidden(d_intermediate)
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)                  # (..., hidden) each
        return self.fc2(y * F.silu(gate))                       # (..., d_model)
