"""PackedLinear: an nn.Linear whose weight is stored fp32, bf16 or int8 (per-output-channel scale)
and applied by `ops.linear`, which streams the weight once per decode step (ops/step_cpu.py).
`mambakit.quantize` then lays every streamed weight out in one buffer on transparent huge pages,
in reading order (ops/hugepages.py): the stream needs a TLB entry per 2 MB instead of per 4 KB."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.ops.linear import linear

FORMATS = ("fp32", "bf16", "int8")


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: weight (n, k) -> (int8 (n, k), scale (n,) fp32), weight ≈ int8 · scale.
    The scale maps each row's largest |w| to 127, so every row uses the full int8 range."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0                  # (n,)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class PackedLinear(nn.Module):
    """y = x Wᵀ + b with W in `fmt`; activations keep their dtype. fp32 keeps the very Parameter
    it was given (ties and training still work); bf16 is a bf16 copy; int8 buffers are not
    trained."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], fmt: str):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown weight format {fmt!r}; choose from {list(FORMATS)}")
        self.fmt = fmt
        self.out_features, self.in_features = weight.shape
        self.scale: Optional[Tensor]
        if fmt == "int8":
            w8, scale = quantize_int8(weight)
            self.register_buffer("weight", w8)
            self.register_buffer("scale", scale)
        elif fmt == "fp32":
            self.weight = weight
            self.scale = None
        else:
            self.weight = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=weight.requires_grad)
            self.scale = None
        self.bias = bias

    @classmethod
    def from_linear(cls, module: nn.Linear, fmt: str) -> "PackedLinear":
        bias = module.bias
        if bias is not None and fmt != "fp32":
            bias = nn.Parameter(bias.detach().float(), requires_grad=False)
        return cls(module.weight, bias, fmt)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.scale)                # (..., out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"
