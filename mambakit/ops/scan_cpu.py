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
from mambakit.ops.cpu_kernels import ScanArgs, available, ptr
from mambakit.ops.scan import ScanBackend, register_backend

CHUNK = 64  # checkpoint interval T: backward memory b·d·n·l/T, recompute buffers T·n per thread


def _call(direction: str, dtype: torch.dtype, **kw) -> None:
    tensors = {k: v for k, v in kw.items() if isinstance(v, Tensor) or v is None}
    args = ScanArgs(**{k: ptr(v) for k, v in tensors.items()},
                 **{k: v for k, v in kw.items() if k not in tensors})
    suffix = "f64" if dtype == torch.float64 else "f32"
    getattr(cpu_kernels.library(), f"mk_scan_{direction}_{suffix}")(ctypes.byref(args))


class _FusedScan(torch.autograd.Function):
    """Inputs already in the compute dtype and contiguous; B, C as (b, g, l, n)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus):
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        out = torch.empty_like(u)                                           # (b, d, l)
        last = u.new_empty(b, d, n)                                         # (b, d, n)
        ckpt = u.new_empty(b, d, -(-l // CHUNK), n) if any(ctx.needs_input_grad) else None
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
                None if delta_bias is None else ddelta.sum((0, 2)), dh0, None, None)


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
                                 bool(delta_softplus))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


register_backend(ScanBackend("cpu", selective_scan_cpu, available,
                             "fused C++/OpenMP kernel, compiled on first use"), auto_for=("cpu",))
