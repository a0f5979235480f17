"""y = x Wᵀ + b for every weight format the models store: fp32, bf16, or int8 with per-row scales.

    x       activations                 (..., k), fp32 / bf16 / fp16
    weight  W                           (n, k), fp32 / bf16 / int8
    scale   per-output-channel scale    (n,) fp32; required for (only for) int8: W = int8 · scale
    bias    b                           (n,)

Decoding reads every weight once per token, so its cost is bytes over memory bandwidth: the CPU
backend (ops/step_cpu.py) streams each weight row once for all rows of x and converts to fp32 in
registers; bf16 halves and int8 quarters the bytes. Long inputs (prefill, training) are matrix-
matrix products, where the reference (torch's GEMM on the dequantized weight) is the right tool.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.registry import Backend, BackendRegistry

WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.int8)


def dequantize(weight: Tensor, scale: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """The weight as a `dtype` matrix (n, k)."""
    if scale is None:
        return weight.to(dtype)
    return (weight.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def linear_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
               scale: Optional[Tensor] = None) -> Tensor:
    """The spec: F.linear on the dequantized weight, in x's dtype (differentiable in x, bias
    and a floating-point weight)."""
    return F.linear(x, dequantize(weight, scale, x.dtype), None if bias is None else bias.to(x.dtype))


def check_linear_inputs(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor]) -> None:
    def fail(msg: str):
        raise ValueError(f"linear: {msg}")

    if weight.dim() != 2 or weight.dtype not in WEIGHT_DTYPES:
        fail(f"weight must be a 2-D fp32, bf16 or int8 tensor, got {tuple(weight.shape)} {weight.dtype}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k or not x.is_floating_point():
        fail(f"x must be a floating-point (..., {k}) tensor, got {tuple(x.shape)} {x.dtype}")
    if (weight.dtype == torch.int8) != (scale is not None):
        fail("int8 weights need a per-row scale (n,), and only int8 weights take one")
    for name, t in (("scale", scale), ("bias", bias)):
        if t is not None and (tuple(t.shape) != (n,) or not t.is_floating_point()):
            fail(f"{name} must be a floating-point ({n},) tensor, got {tuple(t.shape)} {t.dtype}")
    for name, t in (("weight", weight), ("scale", scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            fail(f"{name} is on {t.device} but x is on {x.device}")


REGISTRY = BackendRegistry("linear", Backend("ref", linear_ref, lambda device: None,
                                             "F.linear on the dequantized weight (the spec)"))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, scale: Optional[Tensor] = None,
           backend: str = "auto") -> Tensor:
    """x (..., k) -> (..., n) in x's dtype. backend: "auto" | "ref" | "cpu" | whatever is registered."""
    check_linear_inputs(x, weight, bias, scale)
    return REGISTRY.resolve(backend, x.device).fn(x, weight, bias, scale)
