"""The CPU backends of the one-token decode ops (csrc/decode_step.cpp, csrc/gemv.cpp via
ops/cpu_kernels.py).

Two calls per layer replace ~30 tiny eager ops between the mixer's matmuls:
`selective_state_update` backend "cpu" (twin: selective_state_update_ref) — or for Mamba-2
`ssd_step` backend "cpu" (twin: ssd_step_ref) — and `causal_conv1d_step` backend "cpu" (twin:
causal_conv1d_step_ref); tests compare them. `linear` backend "cpu" streams fp32 / bf16 / int8
weights for matrix-vector products (twins: linear_ref, with x rounded to bf16 where the CPU has
bf16 dot products; linear_q8_ref for int8).

The kernels compute in fp32 and are not differentiable: when autograd needs the result, or for
fp64 inputs (kept exact for gradcheck), these backends hand the call to the reference twin.
bf16/fp16 activations are upcast to fp32 for the state update (the state is fp32 anyway).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.conv import STEP_REGISTRY, causal_conv1d_step_ref
from mambakit.ops.cpu_kernels import available, in_place_rows, library, ptr
from mambakit.ops.linear import REGISTRY as LINEAR_REGISTRY
from mambakit.ops.linear import linear_ref
from mambakit.ops.registry import Backend
from mambakit.ops.ssd import NO_LIMIT, ssd_step_ref
from mambakit.ops.ssd import STEP_REGISTRY as SSD_STEP_REGISTRY
from mambakit.ops.state_update import REGISTRY, selective_state_update_ref

_F32 = torch.float32


def _needs_reference(*tensors: Optional[Tensor]) -> bool:
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return True  # autograd needs the differentiable reference ops
    return any(t.dtype == torch.float64 for t in present)


def conv_step_cpu(x: Tensor, state: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  activation: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """causal_conv1d_step in one pass: x (b, d) (a row-strided view is fine), state (b, d, k-1),
    weight (d, k) -> (y (b, d), new state (b, d, k-1)); shapes checked by the dispatcher."""
    if _needs_reference(x, state, weight, bias) or any(
            t.dtype != _F32 for t in (x, state, weight) + (() if bias is None else (bias,))):
        return causal_conv1d_step_ref(x, state, weight, bias, activation=activation)
    b, d = x.shape
    k = weight.shape[-1]
    x, state, weight = in_place_rows(x, x.dim() - 1), state.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y, new_state = x.new_empty(b, d), torch.empty_like(state)
    library().mk_conv_step_f32(ptr(x), x.stride(0), ptr(state), ptr(new_state), ptr(weight), ptr(bias),
                               ptr(y), b, d, k, int(activation == "silu"))
    return y, new_state


def state_update_cpu(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                     dt_bias: Optional[Tensor] = None, dt_softplus: bool = False) -> tuple[Tensor, Tensor]:
    """selective_state_update in one pass per channel; same contract as the reference. x, dt, z,
    B, C may be row-strided views (e.g. into x_proj's output); shapes checked by the dispatcher."""
    if _needs_reference(state, x, dt, A, B, C, D, z, dt_bias):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    b, d, n = state.shape

    def f32(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else in_place_rows(t.to(_F32), t.dim() - 1)  # stride-1 last dim

    xf, dt, z, B, C = f32(x), f32(dt), f32(z), f32(B), f32(C)
    state, A, D, dt_bias = _f32_contiguous(state, A, D, dt_bias)
    B3, C3 = (B, C) if B.dim() == 3 else (B[:, None], C[:, None])          # (b, g, n)
    y, new_state = xf.new_empty(b, d), torch.empty_like(state)
    library().mk_state_update_f32(
        ptr(state), ptr(new_state), ptr(xf), xf.stride(0), ptr(dt), dt.stride(0), ptr(dt_bias),
        int(dt_softplus), ptr(A), ptr(B3), B3.stride(0), B3.stride(1), ptr(C3), C3.stride(0),
        C3.stride(1), B3.shape[1], ptr(D), ptr(z), 0 if z is None else z.stride(0), ptr(y), b, d, n)
    return y.to(x.dtype), new_state


def _f32_contiguous(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    """Each tensor as contiguous fp32 (None stays None): what the kernels index by plain pointers."""
    return tuple(None if t is None else t.to(_F32).contiguous() for t in tensors)


def ssd_step_cpu(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                 dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT) -> tuple[Tensor, Tensor]:
    """ssd_step in one pass over the state (csrc/ssd_step.cpp); same contract as ssd_step_ref.
    x, z (b, h, p), dt (b, h) and B, C (b, g, n) may be row-strided views; shapes checked by the
    dispatcher."""
    if _needs_reference(state, x, dt, A, B, C, D, z, dt_bias):
        return ssd_step_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    b, h, p, n = state.shape

    def f32(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else in_place_rows(t.to(_F32))  # each batch row contiguous

    xf, dtf, zf, Bf, Cf = f32(x), f32(dt), f32(z), f32(B), f32(C)
    state, A, D, dt_bias = _f32_contiguous(state, A, D, dt_bias)
    lo, hi = (-math.inf, math.inf) if tuple(dt_limit) == NO_LIMIT else dt_limit   # NO_LIMIT: no clamp at all
    y, new_state = xf.new_empty(b, h, p), torch.empty_like(state)
    library().mk_ssd_step_f32(
        ptr(state), ptr(new_state), ptr(xf), xf.stride(0), ptr(dtf), dtf.stride(0), ptr(dt_bias),
        int(dt_softplus), float(lo), float(hi), ptr(A), ptr(Bf), Bf.stride(0), ptr(Cf),
        Cf.stride(0), B.shape[1], ptr(D), int(D is not None and D.dim() == 2), ptr(zf),
        0 if zf is None else zf.stride(0), ptr(y), h * p, b, h, p, n)
    return y.to(x.dtype), new_state


REGISTRY.register(Backend("cpu", state_update_cpu, available, "fused C++/OpenMP kernel"), auto_for=("cpu",))
SSD_STEP_REGISTRY.register(Backend("cpu", ssd_step_cpu, available, "fused C++/OpenMP kernel"), auto_for=("cpu",))
STEP_REGISTRY.register(Backend("cpu", conv_step_cpu, available, "fused C++/OpenMP kernel"), auto_for=("cpu",))


# Rows of x up to which the GEMV kernel runs; more go to linear_ref (torch's GEMM, for bf16 / int8
# on the dequantized weight). The kernel uses each weight row for every row of x while the row is
# in cache, rows of x 4 at a time. Measured on one Zen 3 core (CPU time, 130M shapes): fp32 at
# m = 32 0.60-1.00x of torch's F.linear time (LM head, in_proj, out_proj), at m = 64 0.81-1.18x;
# bf16 / int8 through the GEMM path first dequantize the whole weight (130M bf16 at B=32: 156
# tok/s against 188 at B=8 when the limit was 16).
MAX_GEMV_ROWS = 64
_GEMV = {torch.float32: "mk_gemv_f32", torch.bfloat16: "mk_gemv_bf16", torch.int8: "mk_gemv_i8"}


def gemv_arithmetic(lib=None) -> dict[str, str]:
    """How the GEMV kernels of `lib` (default: this CPU's build) compute, per weight format:
    bf16 -> "bf16 dot products" (x rounded to bf16; avx512_bf16) or "fp32"; int8 -> "avx512-vnni",
    "avx2" or "scalar" (all three: x quantized as q8_0, the same integer block sums)."""
    flags = (lib or library()).mk_gemv_arithmetic()
    return {"fp32": "fp32", "bf16": "bf16 dot products" if flags & 1 else "fp32",
            "int8": ("scalar", "avx2", "avx512-vnni")[(flags >> 1) & 3]}


def gemv(lib, x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
         threads: int) -> Tensor:
    """The kernel call: x (m, k) fp32 with stride-1 rows, weight (n, k) contiguous, scale and bias
    fp32 contiguous (n,) or None -> y (m, n) fp32. Shapes are the caller's to check."""
    m, k = x.shape
    n = weight.shape[0]
    y = x.new_empty(m, n)
    w = weight.view(torch.int16) if weight.dtype == torch.bfloat16 else weight   # bf16 as raw bits
    getattr(lib, _GEMV[weight.dtype])(ptr(x), x.stride(0), ptr(w), ptr(scale), ptr(bias), ptr(y), n, m,
                                      n, k, threads)
    return y


def linear_cpu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
               scale: Optional[Tensor] = None) -> Tensor:
    """`linear` for decoding: one pass over the weights for up to MAX_GEMV_ROWS rows of x (twins:
    linear_ref; linear_q8_ref for int8 weights, whose activations are quantized as q8_0); longer
    inputs, autograd and fp64 go to linear_ref."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k if k else 0
    if rows == 0 or rows > MAX_GEMV_ROWS or _needs_reference(x, weight, bias, scale):
        return linear_ref(x, weight, bias, scale)
    x2 = in_place_rows(x.reshape(rows, k).to(_F32))                      # (m, k)
    scale = None if scale is None else scale.to(_F32).contiguous()
    bias = None if bias is None else bias.to(_F32).contiguous()
    # Small matrices (x_proj: 80 rows) finish before a second thread would have started.
    threads = torch.get_num_threads() if n * k >= 1 << 17 else 1
    y = gemv(library(), x2, weight.contiguous(), bias, scale, threads)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


LINEAR_REGISTRY.register(Backend("cpu", linear_cpu, available, "weight-streaming C++ GEMV"), auto_for=("cpu",))
