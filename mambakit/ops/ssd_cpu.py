"""SSD's CPU backend "cpu": the chunked SSD algorithm with its forward and its backward each fused
in C++ (csrc/ssd_chunk.cpp: the forward walks blocks of heads chunk by chunk, the backward one pass
per (batch, head); called through
ssd_chunk_scan.chunk_scan_fwd_cpu / chunk_scan_bwd_cpu). Twins: ssd_scan_chunked (the same
algorithm in PyTorch ops, with ChunkScan's PyTorch backward) and ssd_scan_ref (the spec); tests
compare outputs, final states and gradients.

Two paths:
- inference (autograd not needed): Δx built, and the D skip and gate applied, inside the kernel
  (x and z read in place), no padding (the kernel takes a short last chunk), no chunk states
  kept — only what prefill needs;
- training: ssd_scan_chunked with `fused=True`: ChunkScan's forward runs in C++ and also writes the
  chunk states; its backward runs in C++ from them (chunk_scan_bwd_cpu), walking the chunks
  backwards with the state gradient in cache. It replaced ChunkScan's PyTorch backward on this
  path (still the twin, and the path for other devices and fp64) because that one streams a dozen
  (b, c, h, Q, Q)- and (b, l, h, p)-sized temporaries through memory per layer: on the 2-core Zen 3
  it was ~15% of the 130M training step (torch.profiler, 1 thread).
fp64 inputs (kept exact for gradcheck) go to ssd_scan_chunked unfused.

Chunk size: the kernel's best chunk is a property of the CPU's caches, not of the model, so this
backend uses its own, CPU_CHUNK_SIZE, and reads the `chunk_size` argument (the config field, the
GPU kernels' tile: mamba_ssm's 256) as no more than a hint for other backends. Changing the config
default instead would change what `chunk_size` means in saved configs and on GPUs. Measured on the
2-core Zen 4 (130M shape, L=2048, the kernel alone, medians of 5): 32 -> 1.08, 64 -> 1.00,
128 -> 1.58, 256 -> 1.77 (time relative to 64); the (Q × Q) block and the chunk's B/Δx rows stay
in L1/L2 at 64, and the training step agreed (see benchmarks/bench_mamba2.py's sweep). Rechecked
on the 2-core Zen 3 after the forward kernel's register tile and head blocks (1 thread,
interleaved medians): the inference kernel alone 32 -> 0.89-0.95, 48 -> 0.83-0.92, 128 -> 1.09,
but a whole prefill (4 layers, L=2048) moved under 1.5% at 32 or 48, and the training op's forward
plus backward preferred 64 (48 -> 1.07, 32 -> 1.08): 64 stays.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.cpu_kernels import available
from mambakit.ops.registry import needs_grad
from mambakit.ops.ssd import (
    NO_LIMIT,
    Backend,
    compute_dtype,
    discretize_dt,
    register_ssd_backend,
    skip_and_gate,
)
from mambakit.ops.ssd_chunk_scan import chunk_scan_fwd_cpu
from mambakit.ops.ssd_chunked import ssd_scan_chunked

CPU_CHUNK_SIZE = 64


def ssd_scan_cpu(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = CPU_CHUNK_SIZE,
                 D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                 dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
                 initial_states: Optional[Tensor] = None, return_final_states: bool = False,
                 reset: Optional[Tensor] = None):
    """ssd_scan's contract with the fused kernel, at the given `chunk_size` (tests sweep it; the
    registered backend passes CPU_CHUNK_SIZE)."""
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  initial_states=initial_states, return_final_states=return_final_states, reset=reset)
    ct = compute_dtype(x)
    if ct != torch.float32:
        return ssd_scan_chunked(x, dt, A, B, C, chunk_size, **kwargs)
    if needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return ssd_scan_chunked(x, dt, A, B, C, chunk_size, fused=True, **kwargs)

    b, l, h, p = x.shape
    Q = min(chunk_size, l)
    c = -(-l // Q)
    seg = None if reset is None else F.pad(reset.long(), (0, c * Q - l)).view(b, c, Q).cumsum(-1)
    h0 = None if initial_states is None else initial_states.to(ct)
    f32 = lambda t: None if t is None else t.to(ct)
    if x.dtype == ct and (z is None or z.dtype == ct):
        # Δ, Δx, the D skip and the gate inside the kernel: x, z, dt, B and C read in place
        lo, hi = dt_limit if tuple(dt_limit) != NO_LIMIT else (-math.inf, math.inf)
        y, final, _ = chunk_scan_fwd_cpu(None, None, f32(B), f32(C), h0, seg, Q, x=x, dt=f32(dt), A=f32(A),
                                         dt_bias=f32(dt_bias), dt_softplus=dt_softplus, dt_limit=(lo, hi),
                                         D=f32(D), z=z)
    else:
        dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)              # (b, l, h)
        y, final, _ = chunk_scan_fwd_cpu(x.to(ct) * dt[..., None], dt * A.to(ct), f32(B), f32(C), h0, seg, Q)
        y = skip_and_gate(y, x, D, z).to(x.dtype)
    return (y, final) if return_final_states else y


def _ssd_scan_cpu_backend(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                          **kwargs):
    """The registered backend: the CPU's own chunk size, whatever the config's (see the module doc)."""
    return ssd_scan_cpu(x, dt, A, B, C, CPU_CHUNK_SIZE, **kwargs)


register_ssd_backend(Backend("cpu", _ssd_scan_cpu_backend, available,
                             "chunked SSD, forward and backward fused in C++ (CPU, fp32)"),
                     auto_for=("cpu",))
