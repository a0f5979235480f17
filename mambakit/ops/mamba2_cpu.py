"""The Mamba-2 mixer's elementwise stages for prefill on CPU, fused (csrc/mamba2_rows.cpp):
the causal conv + SiLU over x‖B‖C read in place from in_proj's output, and the gated, grouped
RMSNorm. Each function has its PyTorch reference twin here; tests compare them.

The kernels are inference-only and fp32: when autograd needs the result, for other dtypes or
devices, or without the compiled kernels, each function runs its twin (which autograd
differentiates). Layout "rows": (b, l, d) with channels contiguous, as the matmuls produce them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.conv import causal_conv1d
from mambakit.ops.cpu_kernels import available, library, ptr

_F32 = torch.float32


def _fused_ok(*tensors: Optional[Tensor]) -> bool:
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return (all(t.dtype == _F32 and t.device.type == "cpu" for t in present)
            and available(torch.device("cpu")) is None)


def conv_silu_rows_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                       state: Optional[Tensor] = None, reset: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """x (b, l, d) rows, weight (d, k), bias (d,), state (b, d, k-1) or None (zeros)
    -> (silu(causal_conv1d(x)) (b, l, d), new state (b, d, k-1)): the spec, via causal_conv1d."""
    y, new_state = causal_conv1d(x.transpose(1, 2), weight, bias, state, reset)
    return F.silu(y).transpose(1, 2), new_state


def conv_silu_rows(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, state: Optional[Tensor] = None,
                   reset: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """conv_silu_rows_ref's contract; the output is contiguous (b, l, d) on the fused path (a
    transposed view on the twin's). x may be a row-strided view (e.g. a column slice of a matmul)."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"conv_silu_rows: x must be (b, l, d) and weight (d, k), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    b, l, d = x.shape
    k = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"conv_silu_rows: bias must have shape {(d,)}, got {tuple(bias.shape)}")
    if state is not None and tuple(state.shape) != (b, d, k - 1):
        raise ValueError(f"conv_silu_rows: state must have shape {(b, d, k - 1)}, got {tuple(state.shape)}")
    if reset is not None or k < 2 or l == 0 or not _fused_ok(x, weight, bias, state):
        return conv_silu_rows_ref(x, weight, bias, state, reset)
    if x.stride(2) != 1 or x.stride(0) != l * x.stride(1):
        x = x.contiguous()
    state = x.new_zeros(b, d, k - 1) if state is None else state.contiguous()
    wT = weight.t().contiguous()                                                # (k, d)
    bias = None if bias is None else bias.contiguous()
    y, new_state = x.new_empty(b, l, d), x.new_empty(b, d, k - 1)
    library().mk_conv_silu_rows_f32(ptr(x), x.stride(1), ptr(state), ptr(wT), ptr(bias), ptr(y),
                                    ptr(new_state), b, l, d, k, 1, torch.get_num_threads())
    return y, new_state


def rms_norm_gated_ref(y: Tensor, z: Optional[Tensor], weight: Tensor, eps: float, group_size: int,
                       norm_before_gate: bool = False) -> Tensor:
    """RMSNorm over groups of `group_size` channels of y · SiLU(z) (or of y, then · SiLU(z) when
    norm_before_gate), times weight; computed in fp32, returned in y's dtype. y, z (..., d)."""
    x = y.float()
    if z is not None and not norm_before_gate:
        x = x * F.silu(z.float())
    groups = x.unflatten(-1, (-1, group_size))                                 # (..., d/gs, gs)
    x = F.rms_norm(groups, (group_size,), None, eps).flatten(-2) * weight.float()
    if z is not None and norm_before_gate:
        x = x * F.silu(z.float())
    return x.to(y.dtype)


def rms_norm_gated(y: Tensor, z: Optional[Tensor], weight: Tensor, eps: float, group_size: int,
                   norm_before_gate: bool = False) -> Tensor:
    """rms_norm_gated_ref's contract in one pass per row (fused path: fp32 CPU, no autograd).
    z may be a row-strided view (a column slice of in_proj's output)."""
    d = y.shape[-1]
    if z is not None and z.shape != y.shape:
        raise ValueError(f"rms_norm_gated: z must have y's shape {tuple(y.shape)}, got {tuple(z.shape)}")
    if tuple(weight.shape) != (d,) or group_size < 1 or d % group_size:
        raise ValueError(f"rms_norm_gated: weight must be ({d},) and group_size divide {d}, got "
                         f"{tuple(weight.shape)} and {group_size}")
    if y.numel() == 0 or not _fused_ok(y, z, weight):
        return rms_norm_gated_ref(y, z, weight, eps, group_size, norm_before_gate)
    y2, z2 = _as_rows(y, d), None if z is None else _as_rows(z, d)
    out, weight = y.new_empty(y.shape), weight.contiguous()  # named: alive through the call
    library().mk_rmsnorm_gated_f32(ptr(y2), y2.stride(0), ptr(z2), 0 if z2 is None else z2.stride(0),
                                   ptr(weight), ptr(out), y2.shape[0], d, group_size,
                                   float(eps), int(norm_before_gate), torch.get_num_threads())
    return out


def _as_rows(t: Tensor, d: int) -> Tensor:
    """t (..., d) as (rows, d) with stride-1 channels: a view when t is rows at one fixed stride
    (a column slice of a matmul output is), else a copy."""
    try:
        r = t.view(-1, d)
    except RuntimeError:
        r = t.reshape(-1, d)
    return r if r.stride(1) == 1 else r.contiguous()
