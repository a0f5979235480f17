"""Selective scan (S6): the one dispatch point and the sequential reference that is its spec.

Glossary (Mamba paper, Gu & Dao 2023, Algorithm 2; mamba_ssm's selective_scan_fn names):
    b       batch size                       B (the paper's batch)
    d       channels (d_inner of the block)  D
    l       sequence length                  L
    n       state size per channel           N (d_state)
    g       groups sharing one B/C           (mamba_ssm's grouped B/C, g divides d)
    u       input x_t                         (b, d, l)
    delta   step Δ_t (before softplus/bias)   (b, d, l)
    A       continuous state matrix, diagonal (d, n): one diagonal per channel, usually negative
    B, C    input/output projections s_B(x), s_C(x): (b, n, l) or (b, g, n, l)
    D       skip connection                   (d,)
    z       gate input: y = y * SiLU(z)       (b, d, l)
    h       hidden state                      (b, d, n)
    deltaA  Ā_t = exp(Δ_t A)                  (b, d, n)   (mamba-minimal's names; in the C++
    deltaB_u B̄_t u_t = Δ_t B_t u_t           (b, d, n)    kernel dA, dB, ... are ∂L/∂A, ∂L/∂B)
    ct      compute dtype (fp32, or fp64 for fp64 inputs); `dt` is always Δ, never a dtype

Recurrence (zero-order hold on A, Euler on B as in mamba_ssm):
    Ā_t = exp(Δ_t A),   B̄_t u_t = Δ_t B_t u_t
    h_t = Ā_t h_{t-1} + B̄_t u_t
    y_t = C_t · h_t + D u_t,     then y_t *= SiLU(z_t)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.registry import Backend, BackendRegistry


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
    return_last_state: bool = False, initial_state: Optional[Tensor] = None,
    reset: Optional[Tensor] = None,
):
    """Sequential reference scan: one time step at a time, in fp32 (fp64 for fp64 inputs, so the
    spec itself can be gradchecked). This is the spec.

    `reset` (b, l) bool marks where a new packed document starts: the state is zeroed before
    that step (h_{t-1} := 0), so documents packed in one row never see each other.
    """
    dtype_in = u.dtype
    ct = torch.promote_types(u.dtype, torch.float32)                  # compute dtype
    u, delta = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    B = _expand_groups(B.to(ct), d)                                   # (b, d, n, l)
    C = _expand_groups(C.to(ct), d)                                   # (b, d, n, l)
    A = A.to(ct)
    h = (torch.zeros(b, d, A.shape[1], device=u.device, dtype=ct) if initial_state is None
         else initial_state.to(ct))                                   # (b, d, n)
    ys = []
    keep = None if reset is None else (~reset.bool()).to(ct)          # (b, l)
    for t in range(l):
        if keep is not None:
            h = h * keep[:, t, None, None]
        deltaA = torch.exp(delta[:, :, t, None] * A)                  # Ā_t: (b, d, n)
        deltaB_u = delta[:, :, t, None] * B[..., t] * u[:, :, t, None]  # B̄_t u_t: (b, d, n)
        h = deltaA * h + deltaB_u
        ys.append((h * C[..., t]).sum(-1))                            # (b, d)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(b, d, 0)       # (b, d, l)
    if D is not None:
        y = y + D.to(ct)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def _expand_groups(X: Tensor, d: int) -> Tensor:
    """(b, n, l) or (b, g, n, l) -> (b, d, n, l): group j serves channels [j*d/g, (j+1)*d/g)."""
    if X.dim() == 3:
        return X[:, None].expand(-1, d, -1, -1)
    g = X.shape[1]
    return X.repeat_interleave(d // g, dim=1)


# ----------------------------------------------------------------------------------------------
# Input checking: every backend gets inputs whose shapes, dtypes and devices are known-good.
# ----------------------------------------------------------------------------------------------
def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                      reset=None) -> None:
    def fail(msg: str):
        raise ValueError(f"selective_scan: {msg}")

    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        fail(f"u must be (batch, d, seqlen), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if delta.shape != u.shape:
        fail(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        fail(f"A must be (d={d}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        fail("complex A (mamba_ssm's complex-valued variant) is not supported; pass a real "
             "(d, d_state) A")
    n = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        if X.dim() == 2:
            fail(f"{name} of shape {tuple(X.shape)} (mamba_ssm's input-independent (d, n) form) is "
                 f"not supported; pass it as one group per channel: "
                 f"{name}[None, :, :, None].expand({b}, -1, -1, {l})")
        if X.dim() == 3:
            if tuple(X.shape) != (b, n, l):
                fail(f"{name} must be (batch={b}, d_state={n}, seqlen={l}), got {tuple(X.shape)}")
        elif X.dim() == 4:
            g = X.shape[1]
            if X.shape[0] != b or X.shape[2:] != (n, l):
                fail(f"{name} must be (batch={b}, groups, d_state={n}, seqlen={l}), got {tuple(X.shape)}")
            if g == 0 or d % g != 0:
                fail(f"{name} has {g} groups, which must divide d={d}")
        else:
            fail(f"{name} must be 3-D (b, n, l) or 4-D (b, g, n, l), got {X.dim()}-D")
    # The fused kernel reads B and C with one group count: refuse a mismatch rather than let it
    # read C out of bounds (a 3-D B/C is one group).
    groups = [1 if X.dim() == 3 else X.shape[1] for X in (B, C)]
    if groups[0] != groups[1]:
        fail(f"B has {groups[0]} group(s) but C has {groups[1]}; B and C must have the same number "
             f"of groups (as in mamba_ssm)")
    optional = (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, (b, d, l)),
                ("initial_state", initial_state, (b, d, n)))
    for name, t, shape in optional:
        if t is not None and tuple(t.shape) != shape:
            fail(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if reset is not None and (not isinstance(reset, Tensor) or tuple(reset.shape) != (b, l)):
        fail(f"reset must be a (batch={b}, seqlen={l}) bool tensor, got "
             f"{tuple(reset.shape) if isinstance(reset, Tensor) else type(reset).__name__}")
    tensors = [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)] + \
              [(name, t) for name, t, _ in optional if t is not None]
    for name, t in tensors:
        if not t.is_floating_point():
            fail(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            fail(f"{name} is on {t.device} but u is on {u.device}; put all inputs on one device")


# ----------------------------------------------------------------------------------------------
# Backends and the one dispatch point.
# ----------------------------------------------------------------------------------------------
ScanBackend = Backend
REGISTRY = BackendRegistry("selective_scan", ScanBackend(
    "ref", selective_scan_ref, lambda device: None, "sequential reference in PyTorch (the spec; slow)"))
register_backend = REGISTRY.register
available_backends = REGISTRY.available
resolve_backend = REGISTRY.resolve


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
    return_last_state: bool = False, initial_state: Optional[Tensor] = None,
    reset: Optional[Tensor] = None, backend: str = "auto",
):
    """Selective scan with mamba_ssm's `selective_scan_fn` contract (see the module glossary).

    Returns `out` (b, d, l) in u's dtype, or `(out, last_state)` with last_state (b, d, n) fp32
    when `return_last_state`. `initial_state` (b, d, n) continues a scan from a carried state;
    `reset` (b, l) bool zeroes the state where a packed document starts (varlen packing).
    Every backend takes the same keyword arguments as `selective_scan_ref`.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    impl = resolve_backend(backend, u.device)
    return impl.fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                   return_last_state=return_last_state, initial_state=initial_state, reset=reset)

