"""The Triton backend of the one-token decode update `selective_state_update` (kernel:
ops/triton_kernels/state_update.py; twin: selective_state_update_ref; availability as the
Triton scan's: CUDA tensors, or CPU tensors under the interpreter).

The kernel is not differentiable: when autograd needs the result this backend hands the call to
the reference. x, dt, z, B, C may be row-strided views into the mixer's matmul outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.cpu_kernels import in_place_rows
from mambakit.ops.registry import Backend, needs_grad
from mambakit.ops.scan_triton import acc_dtype, available, pow2
from mambakit.ops.state_update import REGISTRY, check_state_update_inputs, selective_state_update_ref

BLOCK_D = 32  # channels per program; d = 1536 gives 48 programs per batch row


def state_update_triton(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        dt_bias: Optional[Tensor] = None, dt_softplus: bool = False) -> tuple[Tensor, Tensor]:
    """selective_state_update in one kernel launch; same contract as the reference."""
    check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if needs_grad(state, x, dt, A, B, C, D, z, dt_bias):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    reason = available(state.device)
    if reason is not None:
        raise ValueError(f"selective_state_update backend 'triton' is not available: {reason}")
    from mambakit.ops.triton_kernels.state_update import selective_state_update_kernel

    b, d, n = state.shape
    ct = torch.promote_types(torch.promote_types(x.dtype, torch.float32), state.dtype)  # as the ref
    # stride-1 rows (views into matmul outputs pass through without a copy)
    x, dt, B, C = (in_place_rows(t, t.dim() - 1) for t in (x, dt, B, C))
    z = None if z is None else in_place_rows(z, z.dim() - 1)
    B3, C3 = (B, C) if B.dim() == 3 else (B[:, None], C[:, None])          # (b, g, n)
    y, new_state = x.new_empty(b, d), state.new_empty(b, d, n, dtype=ct)
    state, A = state.contiguous(), A.contiguous()
    D = None if D is None else D.contiguous()
    dt_bias = None if dt_bias is None else dt_bias.contiguous()
    selective_state_update_kernel[(b, -(-d // BLOCK_D))](
        state, x, dt, A, B3, C3, y if D is None else D, x if z is None else z,
        y if dt_bias is None else dt_bias, y, new_state, d, n, B3.shape[1], x.stride(0), dt.stride(0),
        0 if z is None else z.stride(0), B3.stride(0), B3.stride(1), C3.stride(0), C3.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_D=BLOCK_D, BLOCK_N=pow2(n), ACC=acc_dtype(ct))
    return y, new_state


REGISTRY.register(Backend("triton", state_update_triton, available,
                          "fused Triton kernel for CUDA GPUs (optional: pip install 'mambakit[gpu]')"),
                  auto_for=("cuda",))
