"""The Mamba-2 mixer's elementwise stages on CPU, fused, forward and backward: the causal conv +
SiLU over x‖B‖C read in place from in_proj's output (csrc/causal_conv1d.cpp, the same kernel as
Mamba-1's mixer, here writing (b, l, d) rows), and the gated, grouped RMSNorm
(csrc/mamba2_rows.cpp). Each function has its PyTorch reference twin here; tests compare outputs
and gradients.

The kernels are fp32 CPU: for other dtypes or devices, without the compiled kernels, or where the
kernel has no gradient (a conv state or weight that needs one, `reset`), each function runs its
twin, which autograd differentiates. When autograd needs the result, the fused forward runs inside
an autograd.Function whose backward is the hand-written kernel: it keeps only the inputs (views
that are alive anyway) and recomputes the pre-activations, instead of autograd's chain of
intermediates. Layout "rows": (b, l, d) with channels contiguous, as the matmuls produce them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.conv import causal_conv1d
from mambakit.ops.cpu_kernels import available, in_place_rows, library, ptr
from mambakit.ops.registry import needs_grad

_F32 = torch.float32
MAX_D_CONV = 8  # the conv kernel's limit (as ops/mamba_inner.py's)


def _kernel_ok(*tensors: Optional[Tensor]) -> bool:
    present = [t for t in tensors if t is not None]
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
    transposed view on the twin's). x may be a row-strided view (e.g. a column slice of a matmul).
    Differentiable in x, weight and bias (the state gets no gradient on the fused path)."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"conv_silu_rows: x must be (b, l, d) and weight (d, k), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    b, l, d = x.shape
    k = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"conv_silu_rows: bias must have shape {(d,)}, got {tuple(bias.shape)}")
    if state is not None and tuple(state.shape) != (b, d, k - 1):
        raise ValueError(f"conv_silu_rows: state must have shape {(b, d, k - 1)}, got {tuple(state.shape)}")
    if (reset is not None or not 2 <= k <= MAX_D_CONV or l == 0 or not _kernel_ok(x, weight, bias, state)
            or needs_grad(state)):
        return conv_silu_rows_ref(x, weight, bias, state, reset)
    if needs_grad(x, weight, bias):
        return _ConvSiluRows.apply(x, weight, bias, state)
    return _conv_silu_rows_fwd(x, weight, bias, state)


def _conv_silu_rows_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], state: Optional[Tensor]):
    b, l, d = x.shape
    k = weight.shape[1]
    threads = torch.get_num_threads()
    x = in_place_rows(x, 2)                                    # the kernel takes both outer strides
    weight, bias = weight.contiguous(), None if bias is None else bias.contiguous()
    state = None if state is None else state.contiguous()
    y, new_state = x.new_empty(b, l, d), x.new_empty(b, d, k - 1)
    scratch = x.new_empty(threads, 2 * 16 * (l + k - 1))                       # named: alive through the call
    library().mk_conv1d_silu_fwd_f32(ptr(x), x.stride(0), x.stride(1), ptr(state), ptr(weight), ptr(bias),
                                     ptr(y), l * d, 1, d, ptr(new_state), ptr(scratch), b, d, l, k, threads)
    return y, new_state


class _ConvSiluRows(torch.autograd.Function):
    """conv_silu_rows with the kernel's backward: saves x (a view of in_proj's output), the
    weights and the state; the pre-activation is recomputed."""

    @staticmethod
    def forward(ctx, x, weight, bias, state):
        y, new_state = _conv_silu_rows_fwd(x, weight, bias, state)
        ctx.save_for_backward(x, weight, bias, state)
        ctx.mark_non_differentiable(new_state)
        return y, new_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dstate):
        x, weight, bias, state = ctx.saved_tensors
        b, l, d = x.shape
        k = weight.shape[1]
        threads = torch.get_num_threads()
        x, dy = in_place_rows(x, 2), in_place_rows(dy, 2)
        weight = weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        state = None if state is None else state.contiguous()
        dx = x.new_empty(b, l, d)
        dw, db = x.new_empty(d, k), None if bias is None else x.new_empty(d)
        scratch = x.new_empty(threads, 3 * 16 * (l + k - 1))
        library().mk_conv1d_silu_bwd_f32(ptr(x), x.stride(0), x.stride(1), ptr(state), ptr(weight), ptr(bias),
                                         ptr(dy), dy.stride(0), 1, dy.stride(1), ptr(dx), l * d, d,
                                         ptr(dw), ptr(db), ptr(scratch), b, d, l, k, threads)
        return (dx, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None)


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
    """rms_norm_gated_ref's contract in one pass per row (fp32 CPU; differentiable through the
    kernel's backward). z may be a row-strided view (a column slice of in_proj's output)."""
    d = y.shape[-1]
    if z is not None and z.shape != y.shape:
        raise ValueError(f"rms_norm_gated: z must have y's shape {tuple(y.shape)}, got {tuple(z.shape)}")
    if tuple(weight.shape) != (d,) or group_size < 1 or d % group_size:
        raise ValueError(f"rms_norm_gated: weight must be ({d},) and group_size divide {d}, got "
                         f"{tuple(weight.shape)} and {group_size}")
    if y.numel() == 0 or not _kernel_ok(y, z, weight):
        return rms_norm_gated_ref(y, z, weight, eps, group_size, norm_before_gate)
    if needs_grad(y, z, weight):
        return _RMSNormGated.apply(y, z, weight, float(eps), group_size, bool(norm_before_gate))
    return _rms_norm_gated_fwd(y, z, weight, eps, group_size, norm_before_gate)


def _rms_norm_gated_fwd(y: Tensor, z: Optional[Tensor], weight: Tensor, eps: float, group_size: int,
                        norm_before_gate: bool) -> Tensor:
    d = y.shape[-1]
    y2, z2 = _as_rows(y), None if z is None else _as_rows(z)
    out, weight = y.new_empty(y.shape), weight.contiguous()  # named: alive through the call
    library().mk_rmsnorm_gated_f32(ptr(y2), y2.stride(0), ptr(z2), 0 if z2 is None else z2.stride(0),
                                   ptr(weight), ptr(out), y2.shape[0], d, group_size,
                                   float(eps), int(norm_before_gate), torch.get_num_threads())
    return out


class _RMSNormGated(torch.autograd.Function):
    """rms_norm_gated with the kernel's backward: saves y, z (a view of in_proj's output) and the
    weight, and recomputes the normalised rows."""

    @staticmethod
    def forward(ctx, y, z, weight, eps, group_size, norm_before_gate):
        ctx.save_for_backward(y, z, weight)
        ctx.args = (eps, group_size, norm_before_gate)
        return _rms_norm_gated_fwd(y, z, weight, eps, group_size, norm_before_gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        y, z, weight = ctx.saved_tensors
        eps, group_size, norm_before_gate = ctx.args
        d = y.shape[-1]
        threads = torch.get_num_threads()
        y2, z2 = _as_rows(y), None if z is None else _as_rows(z)
        dout, weight = dout.contiguous(), weight.contiguous()
        dy = y.new_empty(y.shape)
        dz = None if z is None else z.new_empty(z.shape)
        dw_part = y.new_zeros(threads, d)
        library().mk_rmsnorm_gated_bwd_f32(ptr(y2), y2.stride(0), ptr(z2), 0 if z2 is None else z2.stride(0),
                                           ptr(weight), ptr(dout), ptr(dy), ptr(dz), ptr(dw_part), y2.shape[0],
                                           d, group_size, eps, int(norm_before_gate), threads)
        return dy, dz, dw_part.sum(0), None, None, None



def _as_rows(t: Tensor) -> Tensor:
    """t (..., d) as (rows, d) at one row stride: in place when it is one (z, a column slice of
    in_proj's output, is), else copied."""
    return in_place_rows(t, t.dim() - 1, one_stride=True).view(-1, t.shape[-1])
