"""The Transformer's position-wise feed-forward layer: SwiGLU (Shazeer 2020) or GELU (GPT-2)."""
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
