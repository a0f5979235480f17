"""Selective scan on GPUs in Triton (the "triton" backend): the hardware-aware algorithm of the
Mamba paper (§3.3.2) — state in registers, discretization + scan + D skip + SiLU(z) gate fused
into one pass over u/Δ/B/C/z, and a backward that recomputes states from chunk checkpoints
instead of storing the (b, d, l, n) expansion. Kernels: ops/triton_kernels/scan.py.

Triton is optional (`pip install 'mambakit[gpu]'`): it is imported only when this backend runs.
On CPU tensors the kernels run under Triton's interpreter when TRITON_INTERPRET=1 was set before
triton was imported — slow, but it is how the tests check the very same kernel code without a GPU.
Inputs are read in their own dtype (fp32/bf16/fp16/fp64) and everything is accumulated in fp32
(fp64 for fp64 inputs, so gradcheck works); the output is in u's dtype, the last state in fp32.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.registry import needs_grad
from mambakit.ops.scan import ScanBackend, check_scan_inputs, register_backend

CHUNK = 64     # checkpoint interval T: backward memory b·d·n·l/T
BLOCK_D = 16   # channels per program: b·d/16 programs keep a GPU busy at d = 1536


@functools.cache
def _triton_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed (pip install 'mambakit[gpu]'): {exc}"
    return None


def interpreting() -> bool:
    """True when triton was imported in interpreter mode (TRITON_INTERPRET=1 set before its import:
    triton decorates its own library functions for one mode, once)."""
    import triton.language as tl

    return type(tl.sum).__name__ == "InterpretedFunction"


def available(device: torch.device) -> Optional[str]:
    """None if Triton kernels can run on `device`, else why not (shared by every Triton op)."""
    error = _triton_error()
    if error is not None:
        return error
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 set before triton is "
            f"imported), got {device.type}")


def acc_dtype(dtype: torch.dtype):
    """The Triton accumulation dtype for inputs of `dtype`: fp64 for fp64, else fp32."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _flags(D, z, delta_bias, softplus, reset) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=softplus, HAS_RESET=reset is not None)


class _TritonScan(torch.autograd.Function):
    """Inputs contiguous in their own dtypes; B, C as (b, g, n, l); reset as uint8 (b, l)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, reset, softplus, keep):
        from mambakit.ops.triton_kernels.scan import selective_scan_fwd_kernel

        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        chunk = CHUNK  # read per call: tests shrink it to cross many chunk boundaries
        n_chunks = -(-l // chunk)
        out = torch.empty_like(u)                                         # (b, d, l)
        last = u.new_empty(b, d, n, dtype=acc)                            # (b, d, n)
        save = keep
        ckpt = u.new_empty(b, d, n_chunks, n, dtype=acc) if save else last  # h at chunk starts
        grid = (b, g, -(-(d // g) // BLOCK_D))
        dummy = last  # stands in for absent optional tensors (never read: their flag is off)
        selective_scan_fwd_kernel[grid](
            u, delta, A, B, C, _or(D, dummy), _or(z, dummy), _or(delta_bias, dummy),
            _or(initial_state, dummy), _or(reset, dummy), out, last, ckpt, d, l, n, g, n_chunks,
            **_flags(D, z, delta_bias, softplus, reset), HAS_H0=initial_state is not None,
            SAVE_CKPT=save, CHUNK=chunk, BLOCK_D=BLOCK_D, BLOCK_N=pow2(n), ACC=acc_dtype(u.dtype))
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, reset, ckpt)
            ctx.softplus, ctx.has_h0, ctx.grid = softplus, initial_state is not None, grid
            ctx.chunk = chunk
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        from mambakit.ops.triton_kernels.scan import selective_scan_bwd_kernel

        u, delta, A, B, C, D, z, delta_bias, reset, ckpt = ctx.saved_tensors
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        acc = ckpt.dtype
        grid, bn = ctx.grid, pow2(n)
        f32 = dict(device=u.device, dtype=acc)
        du, ddelta = torch.empty(b, d, l, **f32), torch.empty(b, d, l, **f32)
        dz = torch.empty(b, d, l, **f32) if z is not None else du
        dB, dC = torch.zeros(b, g, n, l, **f32), torch.zeros(b, g, n, l, **f32)   # atomic sums
        dA, dh0 = torch.empty(b, d, n, **f32), torch.empty(b, d, n, **f32)         # dA per batch
        dD = torch.empty(b, d, **f32) if D is not None else dA
        scratch = torch.empty(grid[0] * grid[1] * grid[2], ctx.chunk, BLOCK_D, bn, **f32)
        selective_scan_bwd_kernel[grid](
            u, delta, A, B, C, _or(D, dA), _or(z, dA), _or(delta_bias, dA), _or(reset, dA), ckpt,
            dout.contiguous(), _or(None if dlast is None else dlast.contiguous(), dA), scratch,
            du, ddelta, dA, dB, dC, dD, dz, dh0, d, l, n, g, ckpt.shape[2], grid[2],
            **_flags(D, z, delta_bias, ctx.softplus, reset), HAS_DLAST=dlast is not None,
            CHUNK=ctx.chunk, BLOCK_D=BLOCK_D, BLOCK_N=bn, ACC=acc_dtype(u.dtype))
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype),
                dC.to(C.dtype), None if D is None else dD.sum(0).to(D.dtype),
                None if z is None else dz.to(z.dtype),
                None if delta_bias is None else ddelta.sum((0, 2)).to(delta_bias.dtype),
                dh0 if ctx.has_h0 else None, None, None, None)


def _or(t: Optional[Tensor], default: Tensor) -> Tensor:
    return default if t is None else t


def pow2(n: int) -> int:
    """The smallest power of two ≥ n (Triton block sizes are powers of two)."""
    return 1 << max(0, n - 1).bit_length()


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, reset=None):
    """Fused selective scan in Triton, same contract as `selective_scan_ref` (see ops/scan.py)."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    reason = available(u.device)
    if reason is not None:
        raise ValueError(f"selective_scan backend 'triton' is not available: {reason}")

    def prep(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    def groups(X: Tensor) -> Tensor:
        return (X[:, None] if X.dim() == 3 else X).contiguous()           # (b, g, n, l)

    flags = None if reset is None else reset.to(torch.uint8).contiguous()  # (b, l)
    out, last = _TritonScan.apply(prep(u), prep(delta), prep(A), groups(B), groups(C), prep(D),
                                  prep(z), prep(delta_bias), prep(initial_state), flags,
                                  bool(delta_softplus),
                                  needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state))
    return (out, last) if return_last_state else out


register_backend(ScanBackend("triton", selective_scan_triton, available,
                             "fused Triton kernel for CUDA GPUs (optional: pip install 'mambakit[gpu]')"),
                 auto_for=("cuda",))
