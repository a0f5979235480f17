"""Fused one-token Mamba decode step on CPU (csrc/decode_step.cpp, built with the scan kernels).

Two calls per layer replace ~30 tiny eager ops between the mixer's matmuls. Reference twins:
`causal_conv1d_step` (ops/conv.py) and `selective_state_step` (ops/scan.py); tests compare them.
fp32 CPU tensors only; callers fall back to the twins otherwise (and whenever autograd needs them).
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

_P, _I = ctypes.c_void_p, ctypes.c_int64


def declare_step_kernels(lib: ctypes.CDLL) -> None:
    lib.mk_conv_step_f32.argtypes = [_P, _I, _P, _P, _P, _P, _P, _I, _I, _I]
    lib.mk_ssm_step_f32.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _I, _P, _I, _I, _I]
    lib.mk_conv_step_f32.restype = lib.mk_ssm_step_f32.restype = None


def _library():
    from mambakit.ops import scan_cpu

    return scan_cpu._library()


def fused_step_usable(*tensors: Tensor) -> bool:
    """True when the fused kernels can stand in for the reference step on these tensors."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # autograd needs the differentiable reference ops
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return _library() is not None


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _rows(t: Tensor, name: str) -> int:
    """Row stride of a (b, m) view whose rows are stride-1 (e.g. a column slice of a matmul output)."""
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"fused decode step: {name} must be (b, m) with stride-1 rows")
    return t.stride(0)


def conv_step_cpu(x: Tensor, state: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """SiLU(causal_conv1d_step(...)): x (b, d) view, state (b, d, k-1), weight (d, k) ->
    (y (b, d), new state (b, d, k-1))."""
    b, d = x.shape
    k = weight.shape[-1]
    state, weight = state.contiguous(), weight.contiguous()
    y, new_state = x.new_empty(b, d), torch.empty_like(state)
    _library().mk_conv_step_f32(_ptr(x), _rows(x, "x"), _ptr(state), _ptr(new_state), _ptr(weight),
                                _ptr(bias), _ptr(y), b, d, k)
    return y, new_state


def ssm_step_cpu(state: Tensor, x: Tensor, dt: Tensor, dt_bias: Optional[Tensor], A_log: Tensor,
                 B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """selective_state_step with Δ = softplus(dt + dt_bias) and A = -exp(A_log), fused:
    state (b, d, n), x/dt (b, d), B/C (b, n) views sharing one row stride, z (b, d) view ->
    (y (b, d), new state (b, d, n))."""
    b, d = x.shape
    n = A_log.shape[1]
    if B.stride(0) != C.stride(0):
        raise ValueError("fused decode step: B and C must share a row stride")
    state, x, dt, A_log = state.contiguous(), x.contiguous(), dt.contiguous(), A_log.contiguous()
    y, new_state = x.new_empty(b, d), torch.empty_like(state)
    _library().mk_ssm_step_f32(_ptr(state), _ptr(new_state), _ptr(x), _ptr(dt), _ptr(dt_bias),
                               _ptr(A_log), _ptr(B), _ptr(C), _rows(B, "B"), _ptr(D), _ptr(z),
                               0 if z is None else _rows(z, "z"), _ptr(y), b, d, n)
    return y, new_state
