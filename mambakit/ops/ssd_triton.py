"""Mamba-2's SSD forward as one Triton kernel (the "triton" backend of `ssd_scan`; kernel:
ops/triton_kernels/ssd.py; twin: ssd_scan_ref; availability as the Triton scan's).

Forward only, on purpose. The chunked SSD is matmuls over (Q × Q) blocks, the shape tensor cores
and cuBLAS already run near peak, so torch's version (ssd_chunked.py) is the right tool where it
is not memory-bound. What a fused kernel adds is not FLOPs but memory traffic: the torch form
writes and re-reads the (b, c, h, Q, Q) decay and score blocks and the chunk states — per chunk
h·Q² values against h·Q·p of input, 4x more at Q = 256, p = 64 — while this kernel keeps them in
registers. That pays at inference (prefill), where nothing else needs them. For training, the
backward would need the same blocks again (recomputed or stored), i.e. mamba_ssm's five backward
kernels; until that exists, whenever autograd needs the result this backend hands the call to the
chunked torch form, whose backward is autograd's matmuls. Not yet measured on a GPU.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.registry import Backend
from mambakit.ops.scan_triton import acc_dtype, available, interpreting, pow2
from mambakit.ops.ssd import NO_LIMIT, check_ssd_inputs, register_ssd_backend
from mambakit.ops.ssd_chunked import ssd_scan_chunked

CHUNK = 64      # Q: positions per chunk (a power of two ≥ 16 for tl.dot; `chunk_size` is for "chunked")
MAX_BLOCK_P = 64


def dot_dtype(dtype: torch.dtype):
    """The operand dtype of the kernel's matmuls: on a GPU bf16/fp16 inputs multiply in their own
    dtype on tensor cores (fp32 accumulation, as mamba_ssm), fp32 as 3xTF32, fp64 exact. Triton's
    interpreter multiplies bf16 operands wrongly (triton 3.9), so there every dot runs in fp32."""
    import triton.language as tl

    if interpreting():
        return acc_dtype(dtype)
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(dtype, acc_dtype(dtype))


def ssd_scan_triton(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                    D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                    dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
                    initial_states: Optional[Tensor] = None, return_final_states: bool = False,
                    reset: Optional[Tensor] = None):
    """Same contract as `ssd_scan_ref` (ops/ssd.py); computes in fp32 (fp64 for fp64 inputs)."""
    args = (x, dt, A, B, C, chunk_size)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  initial_states=initial_states, return_final_states=return_final_states, reset=reset)
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, reset)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)):
        return ssd_scan_chunked(*args, **kwargs)          # training: the chunked form and its backward
    reason = available(x.device)
    if reason is not None:
        raise ValueError(f"ssd_scan backend 'triton' is not available: {reason}")
    from mambakit.ops.triton_kernels.ssd import ssd_fwd_kernel

    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def prep(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    x, dt, A, B, C, D, z, dt_bias, h0 = map(prep, (x, dt, A, B, C, D, z, dt_bias, initial_states))
    flags = None if reset is None else reset.to(torch.uint8).contiguous()   # (b, l)
    y, final = torch.empty_like(x), x.new_empty(b, h, p, n, dtype=acc)
    block_p = min(MAX_BLOCK_P, max(16, pow2(p)))
    no_limit = tuple(dt_limit) == NO_LIMIT
    ssd_fwd_kernel[(b, h, -(-p // block_p))](
        x, dt, A, B, C, final if D is None else D, x if z is None else z, A if dt_bias is None else dt_bias,
        final if h0 is None else h0, final if flags is None else flags, y, final,
        l, h, p, g, n, 0.0 if no_limit else float(dt_limit[0]), 0.0 if no_limit else float(dt_limit[1]),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=not no_limit,
        HAS_H0=h0 is not None, HAS_RESET=flags is not None,
        Q=CHUNK, BLOCK_P=block_p, BLOCK_N=max(16, pow2(n)), ACC=acc_dtype(x.dtype), DOT=dot_dtype(x.dtype))
    return (y, final) if return_final_states else y


register_ssd_backend(Backend("triton", ssd_scan_triton, available,
                             "fused Triton forward for CUDA GPUs (training: the chunked form)"),
                     auto_for=("cuda",))
