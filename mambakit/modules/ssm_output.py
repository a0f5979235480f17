"""What follows an SSM used as a layer by itself (S4's blocks), as one choice of `output`:

* "glu":    GELU → Linear(d, 2d) → GLU. S4's default; the GLU is a gate (one half of the features
            scales the other), so it mixes channels and gates like Mamba's y·SiLU(z).
* "linear": GELU → Linear(d, d). No gate: the Mamba paper's Table 1 "no gate" rows.
* "none":   y unchanged, no parameters: the SSM is the inner layer of another block.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.config.s4 import OUTPUTS


def make_out_proj(d: int, output: str) -> Optional[nn.Linear]:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    return None if output == "none" else nn.Linear(d, 2 * d if output == "glu" else d)


def apply_output(y: Tensor, out_proj: Optional[nn.Linear]) -> Tensor:
    """y (..., d) -> (..., d) through the head `make_out_proj` built (its width says which)."""
    if out_proj is None:
        return y
    out = out_proj(F.gelu(y))
    return F.glu(out, dim=-1) if out_proj.out_features == 2 * out_proj.in_features else out
