"""Fused CPU selective scan: csrc/selective_scan.cpp, built and loaded by ops/cpu_kernels.py.

The forward keeps the state h (n values per channel) in registers and saves it only every
`CHUNK` steps when a backward will follow; the backward recomputes each chunk from its
checkpoint, so training memory is O(b·d·n·l/CHUNK) instead of O(b·d·n·l).
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from mambakit.ops import cpu_kernels
from mambakit.ops.cpu_kernels import ScanArgs, available, in_place_rows, ptr
from mambakit.ops.registry import needs_grad
from mambakit.ops.scan import ScanBackend, register_backend

CHUNK = 64  # checkpoint interval T: backward memory b·d·n·l/T, recompute buffers T·n per thread


def _call(direction: str, dtype: torch.dtype, **kw) -> None:
    tensors = {k: v for k, v in kw.items() if isinstance(v, Tensor) or v is None}
    args = ScanArgs(**{k: ptr(v) for k, v in tensors.items()},
                 **{k: v for k, v in kw.items() if k not in tensors})
    suffix = "f64" if dtype == torch.float64 else "f32"
    getattr(cpu_kernels.library(), f"mk_scan_{direction}_{suffix}")(ctypes.byref(args))


ROWS_LANES = 8  # scan_rows_fwd: channels per vector; d must be a multiple


def scan_rows_applies(d: int, n: int) -> bool:
    """Whether `scan_rows_fwd` takes these sizes (n = 16, whole octets of channels)."""
    return n == 16 and d % ROWS_LANES == 0


def scan_rows_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                  z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                  initial_state: Optional[Tensor] = None, delta_softplus: bool = True) -> tuple[Tensor, Tensor]:
    """The selective scan for inference in time-major layout: u, delta, z (b, l, d), B, C (b, l, n)
    (one group), each with stride-1 rows and any row stride (views into the projections' outputs
    are read in place) -> (y (b, l, d) = (C·h + D u) · SiLU(z), final state (b, d, n)). fp32 CPU,
    n = 16, d a multiple of 8 (`scan_rows_applies`), no autograd. Twin: selective_scan_ref on the
    transposed operands (tests/ops/test_scan_rows.py)."""
    def fail(msg: str):
        raise ValueError(f"scan_rows_fwd: {msg}")

    if u.dim() != 3:
        fail(f"u must be (b, l, d), got {tuple(u.shape)}")
    b, l, d = u.shape
    n = A.shape[-1] if A.dim() == 2 else -1
    if not scan_rows_applies(d, n) or tuple(A.shape) != (d, n) or b * l == 0:
        fail(f"needs d a multiple of {ROWS_LANES}, A (d, 16), b, l > 0: got u {tuple(u.shape)}, A {tuple(A.shape)}")
    rows = dict(u=(u, d), delta=(delta, d), B=(B, n), C=(C, n), z=(z, d))
    for name, (t, width) in rows.items():
        if t is not None and tuple(t.shape) != (b, l, width):
            fail(f"{name} must be ({b}, {l}, {width}), got {tuple(t.shape)}")
    # The kernel addresses row t of batch i at (i·l + t)·stride, B and C at one stride: other
    # layouts are copied.
    u, delta, B, C, z = (None if t is None else in_place_rows(t, 2, one_stride=True) for t in (u, delta, B, C, z))
    if B.stride(1) != C.stride(1):
        B, C = B.contiguous(), C.contiguous()
    flat = dict(A=(A, (d, n)), D=(D, (d,)), delta_bias=(delta_bias, (d,)), initial_state=(initial_state, (b, d, n)))
    for name, (t, shape) in flat.items():
        if t is not None and (tuple(t.shape) != shape or not t.is_contiguous()):
            fail(f"{name} must be contiguous {shape}, got {tuple(t.shape)}")
    named = dict(u=u, delta=delta, B=B, C=C, z=z, A=A, D=D, delta_bias=delta_bias, initial_state=initial_state)
    for name, t in named.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            fail(f"{name} must be fp32 on the CPU, got {t.dtype} on {t.device}")
    if needs_grad(*named.values()):
        fail("inference only: run it under torch.no_grad() or torch.inference_mode()")
    y, last = u.new_empty(b, l, d), u.new_empty(b, d, n)
    cpu_kernels.library().mk_scan_rows_fwd_f32(
        ptr(u), u.stride(1), ptr(delta), delta.stride(1), ptr(A), ptr(B), ptr(C), B.stride(1), ptr(D), ptr(z),
        z.stride(1) if z is not None else 0, ptr(delta_bias), ptr(initial_state), ptr(y), d, ptr(last),
        b, d, l, n, int(delta_softplus), max(1, min(torch.get_num_threads(), b * (d // ROWS_LANES))))
    return y, last


class _FusedScan(torch.autograd.Function):
    """Inputs already in the compute dtype and contiguous; B, C as (b, g, l, n)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, keep):
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        out = torch.empty_like(u)                                           # (b, d, l)
        last = u.new_empty(b, d, n)                                         # (b, d, n)
        ckpt = u.new_empty(b, d, -(-l // CHUNK), n) if keep else None      # only for a backward
        # v = C·h + D u before the gate, kept for dz so the backward skips recomputing C·h.
        v = torch.empty_like(u) if ckpt is not None and z is not None else None
        # No more threads than channels: each thread gets its own dB/dC partial in the backward.
        dims = dict(b=b, d=d, l=l, n=n, g=g, chunk=CHUNK, softplus=int(softplus),
                    threads=max(1, min(torch.get_num_threads(), b * d)))
        common = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, reset=reset)
        _call("fwd", u.dtype, **common, h0=initial_state, out=out, last=last, ckpt=ckpt, v=v, **dims)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, reset, ckpt, v)
        ctx.dims, ctx.has_h0 = dims, initial_state is not None
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, reset, ckpt, v = ctx.saved_tensors
        dims = ctx.dims
        b, d, l, n, g = (dims[k] for k in "bdlng")
        partial = u.new_zeros(2, dims["threads"], b, g, l, n)               # per-thread dB, dC
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA, dD = u.new_empty(b, d, n), u.new_empty(b, d)                   # per-batch partials
        dz = torch.empty_like(u) if z is not None else None
        dh0 = u.new_empty(b, d, n) if ctx.has_h0 else None
        _call("bwd", u.dtype, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
              reset=reset, h0=None, out=None, last=None, ckpt=ckpt, v=v, dout=dout.contiguous(),
              dlast=None if dlast is None else dlast.contiguous(), du=du, ddelta=ddelta, dA=dA,
              dB=partial[0], dC=partial[1], dD=dD, dz=dz, dh0=dh0, **dims)
        dB, dC = partial.sum(1)                                             # (b, g, l, n) each
        return (du, ddelta, dA.sum(0), dB, dC, None if D is None else dD.sum(0), dz,
                None if delta_bias is None else ddelta.sum((0, 2)), dh0, None, None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, reset=None):
    """Fused selective scan, same contract as `selective_scan_ref` (see ops/scan.py).

    Computes in fp32 (fp64 for fp64 inputs, e.g. for gradcheck); bf16/fp16 inputs are upcast
    here and the output cast back to u's dtype. last_state is in the compute dtype.
    """
    reason = available(u.device)  # also builds/loads the kernel when called directly
    if reason is not None:
        raise ValueError(f"selective_scan backend 'cpu' is not available: {reason}")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prep(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(dtype).contiguous()

    def bc_layout(X: Tensor) -> Tensor:
        X = X[:, None] if X.dim() == 3 else X                               # (b, g, n, l)
        return X.to(dtype).transpose(-1, -2).contiguous()                   # (b, g, l, n)

    flags = None if reset is None else reset.to(torch.uint8).contiguous()   # (b, l)
    out, last = _FusedScan.apply(prep(u), prep(delta), prep(A), bc_layout(B), bc_layout(C), prep(D),
                                 prep(z), prep(delta_bias), prep(initial_state), flags,
                                 bool(delta_softplus),
                                 needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


register_backend(ScanBackend("cpu", selective_scan_cpu, available,
                             "fused C++/OpenMP kernel, compiled on first use"), auto_for=("cpu",))
