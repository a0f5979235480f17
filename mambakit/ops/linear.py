"""y = x Wᵀ + b for every weight format the models store: fp32, bf16, or int8 with per-row scales.

    x       activations                 (..., k), fp32 / bf16 / fp16
    weight  W                           (n, k), fp32 / bf16 / int8
    scale   per-output-channel scale    (n,) fp32; required for (only for) int8: W = int8 · scale
    bias    b                           (n,)

Decoding reads every weight once per token, so its cost is bytes over memory bandwidth: the CPU
backend (ops/step_cpu.py) streams each weight row once for all rows of x; bf16 halves and int8
quarters the bytes. To keep the arithmetic cheaper than the bytes, it multiplies int8 weights by
int8 activations (x quantized on the fly as llama.cpp's q8_0 blocks: its twin is `linear_q8_ref`)
and, on CPUs with bf16 dot products, bf16 weights by x rounded to bf16. Long inputs (prefill,
training) are matrix-matrix products, where the reference (torch's GEMM on the dequantized
weight, activations as given) is the right tool.
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


Q8_BLOCK = 32  # values of x per quantization block: llama.cpp's q8_0


def quantize_q8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., k) -> q (..., k) int8, d (..., ceil(k / 32)) fp32 with x ≈ q · d per block of 32:
    llama.cpp's q8_0 (d_b = max|x_b| / 127, q = roundf(x · (1 / d_b)), half away from zero), with
    d kept in fp32 where q8_0 stores fp16."""
    k = x.shape[-1]
    nb = -(-k // Q8_BLOCK)
    blocks = F.pad(x.float(), (0, nb * Q8_BLOCK - k)).unflatten(-1, (nb, Q8_BLOCK))  # (..., nb, 32)
    d = blocks.abs().amax(-1) / 127.0                                                # (..., nb)
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    v = blocks * inv[..., None]
    a = v.abs()
    q = torch.copysign(a.floor() + (2.0 * (a - a.floor())).floor(), v)   # exact round-half-away
    return q.to(torch.int8).flatten(-2)[..., :k], d


def linear_q8_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Tensor) -> Tensor:
    """The int8 decode kernel's arithmetic, its twin: y = (Σ_b d_b · (q_b · w_b)) · scale + bias,
    x quantized by `quantize_q8`, each block's dot product exact (in fp64), in x's dtype."""
    q, d = quantize_q8(x)
    k, nb = x.shape[-1], d.shape[-1]
    pad = (0, nb * Q8_BLOCK - k)
    qb = F.pad(q.double(), pad).unflatten(-1, (nb, Q8_BLOCK))                   # (..., nb, 32)
    wb = F.pad(weight.double(), pad).unflatten(-1, (nb, Q8_BLOCK))              # (n, nb, 32)
    dots = torch.einsum("...bi,nbi->...nb", qb, wb)                            # (..., n, nb) exact
    y = (dots * d.double()[..., None, :]).sum(-1) * scale.double()
    return (y if bias is None else y + bias.double()).to(x.dtype)


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
