"""Mamba-2's SSD (state-space duality): the dispatch point, the sequential reference (the spec) and
the one-token update used for decoding.

Glossary (Dao & Gu 2024, "Transformers are SSMs"; mamba_ssm's mamba_chunk_scan_combined names):
    b       batch size
    l       sequence length
    h       heads (nheads); each head has one scalar A
    p       head dimension (headdim): channels per head, d_inner = h·p
    g       groups (ngroups) sharing one B/C; head i uses group i // (h/g)
    n       state size (d_state)
    x       input                              (b, l, h, p)
    dt      step Δ_t per head (before bias/softplus/limit)   (b, l, h)
    A       scalar continuous decay per head, negative        (h,)
    B, C    input/output projections           (b, l, g, n)
    D       skip connection                    (h,) or (h, p)
    z       gate input: y = y · SiLU(z)        (b, l, h, p)
    state   hidden state per head              (b, h, p, n)

Recurrence (zero-order hold on the scalar A, Euler on B, as mamba_ssm):
    state_t = exp(Δ_t A) · state_{t-1} + Δ_t · x_t B_tᵀ        (p, n) per head
    y_t     = state_t C_t + D x_t,        then y_t *= SiLU(z_t)
Because Ā_t is a scalar per head, y = (L ∘ C Bᵀ)(Δ x) with L[t, s] = exp(Σ_{s<r≤t} Δ_r A): a masked
"attention" matrix (1-semiseparable). ssd_chunked.py holds that dual form and the chunked algorithm.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.registry import Backend, BackendRegistry

NO_LIMIT = (0.0, math.inf)


# ----------------------------------------------------------------------------------------------
# Pieces every form shares, so the forms differ only in how they evaluate the recurrence.
# ----------------------------------------------------------------------------------------------
def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 (so the spec itself can be gradchecked)."""
    return torch.promote_types(x.dtype, torch.float32)


def discretize_dt(dt: Tensor, dt_bias: Optional[Tensor], dt_softplus: bool,
                  dt_limit: tuple[float, float], dtype: torch.dtype) -> Tensor:
    """Δ = clamp(softplus(dt + dt_bias), *dt_limit), in `dtype`; dt (..., h), dt_bias (h,)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    return dt


def expand_groups(X: Tensor, h: int) -> Tensor:
    """(..., g, n) -> (..., h, n): group j serves heads [j·h/g, (j+1)·h/g)."""
    return X.repeat_interleave(h // X.shape[-2], dim=-2)


def skip_and_gate(y: Tensor, x: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """y + D x, then · SiLU(z); y, x, z (..., h, p), D (h,) or (h, p); in y's dtype."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + (D[:, None] if D.dim() == 1 else D) * x.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def ssd_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence for one position, all in one dtype, Δ ready (bias/softplus/limit applied).

    state (b, h, p, n), x (b, h, p), dt (b, h), A (h,), B/C (b, h, n) -> (y (b, h, p), state).
    """
    dA = torch.exp(dt * A)                                                # Ā_t: (b, h)
    state = dA[..., None, None] * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = (state @ C[..., None])[..., 0]                                    # state_t C_t: (b, h, p)
    return y, state


# ----------------------------------------------------------------------------------------------
# The spec and the decoding step.
# ----------------------------------------------------------------------------------------------
def ssd_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
                 D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                 dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
                 initial_states: Optional[Tensor] = None, return_final_states: bool = False,
                 reset: Optional[Tensor] = None):
    """Sequential reference: one position at a time (chunk_size is ignored). This is the spec.

    `reset` (b, l) bool marks where a packed document starts: the state is zeroed before that
    position, so documents packed in one row never see each other.
    """
    ct = compute_dtype(x)
    b, l, h, p = x.shape
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)           # (b, l, h)
    A, xc = A.to(ct), x.to(ct)
    B, C = expand_groups(B.to(ct), h), expand_groups(C.to(ct), h)        # (b, l, h, n)
    state = (x.new_zeros(b, h, p, B.shape[-1], dtype=ct) if initial_states is None
             else initial_states.to(ct))                                 # (b, h, p, n)
    keep = None if reset is None else (~reset.bool()).to(ct)             # (b, l)
    ys = []
    for t in range(l):
        if keep is not None:
            state = state * keep[:, t, None, None, None]
        y, state = ssd_update(state, xc[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    y = skip_and_gate(torch.stack(ys, dim=1), xc, D, z).to(x.dtype)      # (b, l, h, p)
    return (y, state) if return_final_states else y


def ssd_step_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                 dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT) -> tuple[Tensor, Tensor]:
    """The decoding step's spec: `ssd_update` on one position (contract: `ssd_step`)."""
    ct = torch.promote_types(compute_dtype(x), state.dtype)
    h = x.shape[1]
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)           # (b, h)
    y, state = ssd_update(state.to(ct), x.to(ct), dt, A.to(ct),
                          expand_groups(B.to(ct), h), expand_groups(C.to(ct), h))
    return skip_and_gate(y, x, D, z).to(x.dtype), state


# ----------------------------------------------------------------------------------------------
# Input checking: every backend gets inputs whose shapes, dtypes and devices are known-good.
# ----------------------------------------------------------------------------------------------
def _check(op: str, required: list, optional: list, device: torch.device) -> None:
    """required/optional: [(name, tensor, expected shape tuple)]; None in a shape = any size."""
    def fail(msg: str):
        raise ValueError(f"{op}: {msg}")

    for name, t, shape in required + [o for o in optional if o[1] is not None]:
        if not isinstance(t, Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            fail(f"{name} must have shape {want}, got {tuple(t.shape)}")
        if not t.is_floating_point() or t.is_complex():
            fail(f"{name} must be a real floating-point tensor, got {t.dtype}")
        if t.device != device:
            fail(f"{name} is on {t.device} but x is on {device}; put all inputs on one device")


def _check_groups(op: str, B: Tensor, h: int) -> None:
    g = B.shape[-2]
    if g == 0 or h % g != 0:
        raise ValueError(f"{op}: B/C have {g} groups, which must divide nheads={h}")


def check_ssd_inputs(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                     reset=None) -> None:
    op = "ssd_scan"
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{op}: x must be a (batch, seqlen, nheads, headdim) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    b, l, h, p = x.shape
    if l == 0:
        raise ValueError(f"{op}: x has seqlen 0; pass at least one position")
    n = B.shape[-1] if isinstance(B, Tensor) and B.dim() == 4 else None
    _check(op, [("dt", dt, (b, l, h)), ("A", A, (h,)), ("B", B, (b, l, None, None)),
                ("C", C, (b, l, None, n))],
           [("D", D, (h,) if D is None or D.dim() == 1 else (h, p)), ("z", z, (b, l, h, p)),
            ("dt_bias", dt_bias, (h,)), ("initial_states", initial_states, (b, h, p, n))], x.device)
    if C.shape[2] != B.shape[2]:
        raise ValueError(f"{op}: B has {B.shape[2]} groups but C has {C.shape[2]}")
    _check_groups(op, B, h)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    if reset is not None and (not isinstance(reset, Tensor) or tuple(reset.shape) != (b, l)):
        raise ValueError(f"{op}: reset must be a (batch={b}, seqlen={l}) bool tensor, got "
                         f"{tuple(reset.shape) if isinstance(reset, Tensor) else type(reset).__name__}")


def check_step_inputs(state, x, dt, A, B, C, D=None, z=None, dt_bias=None) -> None:
    op = "ssd_step"
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{op}: x must be a (batch, nheads, headdim) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    b, h, p = x.shape
    n = B.shape[-1] if isinstance(B, Tensor) and B.dim() == 3 else None
    _check(op, [("state", state, (b, h, p, n)), ("dt", dt, (b, h)), ("A", A, (h,)),
                ("B", B, (b, None, None)), ("C", C, (b, None, n))],
           [("D", D, (h,) if D is None or D.dim() == 1 else (h, p)), ("z", z, (b, h, p)),
            ("dt_bias", dt_bias, (h,))], x.device)
    if C.shape[1] != B.shape[1]:
        raise ValueError(f"{op}: B has {B.shape[1]} groups but C has {C.shape[1]}")
    _check_groups(op, B, h)


# ----------------------------------------------------------------------------------------------
# Backends and the dispatch points.
# ----------------------------------------------------------------------------------------------
REGISTRY = BackendRegistry("ssd_scan", Backend(
    "ref", ssd_scan_ref, lambda device: None, "sequential reference in PyTorch (the spec; slow)"))
register_ssd_backend = REGISTRY.register
available_ssd_backends = REGISTRY.available
STEP_REGISTRY = BackendRegistry("ssd_step", Backend(
    "ref", ssd_step_ref, lambda device: None, "PyTorch reference (the spec)"))


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
             dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One decoding step (mamba_ssm's selective_state_update for Mamba-2, Δ tied across p).

    state (b, h, p, n) fp32, x/z (b, h, p), dt (b, h), A (h,), B/C (b, g, n), D (h,) or (h, p),
    dt_bias (h,) -> (y (b, h, p) in x's dtype, new state (b, h, p, n)). The state is not mutated.
    backend: "auto" | "ref" | "cpu" (ops/ssd_step_cpu.py) | whatever is registered.
    """
    check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    impl = STEP_REGISTRY.resolve(backend, x.device)
    return impl.fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                   dt_limit=dt_limit)


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
             D: Optional[Tensor] = None, z: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
             dt_softplus: bool = False, dt_limit: tuple[float, float] = NO_LIMIT,
             initial_states: Optional[Tensor] = None, return_final_states: bool = False,
             reset: Optional[Tensor] = None, backend: str = "auto"):
    """SSD with mamba_ssm's `mamba_chunk_scan_combined` contract (see the module glossary).

    Returns y (b, l, h, p) in x's dtype, or (y, final_states (b, h, p, n) fp32) when
    `return_final_states`. `initial_states` (b, h, p, n) continues from a carried state; `reset`
    (b, l) bool zeroes the state where a packed document starts. `chunk_size` only matters to the
    chunked and triton backends (the GPU kernels' tile: mamba_ssm's 256); the CPU backend "cpu"
    (ops/ssd_cpu.py, "auto" on CPU) uses its own measured chunk, CPU_CHUNK_SIZE, since the results
    are the same and its best tile is a property of the CPU's caches, not of the model.
    backend: "auto" | "ref" | "quadratic" | "chunked" | "cpu" | whatever is registered.
    """
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, reset)
    impl = REGISTRY.resolve(backend, x.device)
    return impl.fn(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                   dt_limit=dt_limit, initial_states=initial_states,
                   return_final_states=return_final_states, reset=reset)
