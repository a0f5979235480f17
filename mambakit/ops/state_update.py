"""One-token selective state update (the S6 recurrence for decoding): the dispatch point and its spec.

Same arguments as mamba_ssm's `selective_state_update` (mamba_ssm/ops/triton/
selective_state_update.py), for Mamba-1's (b, d, n) state:

    state   h_{t-1}                           (b, d, n)
    x       input x_t                         (b, d)
    dt      step Δ_t before bias/softplus     (b, d)
    A       continuous state matrix, diagonal (d, n), usually negative
    B, C    s_B(x_t), s_C(x_t)                (b, n), or (b, g, n): group j serves channels
                                              [j·d/g, (j+1)·d/g)
    D       skip                              (d,)
    z       gate input                        (b, d)
    dt_bias added to dt before the softplus   (d,)

    Δ = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias
    h_t = exp(Δ A) h_{t-1} + Δ B x_t,   y = (C · h_t + D x_t) · SiLU(z)

One difference from mamba_ssm, on purpose: the state is not updated in place. The call returns
`(y, new_state)` and leaves `state` untouched, so a state someone still holds (a cached prompt,
a forked sequence) never changes behind their back (as `ssd_step` does for Mamba-2).
Mamba-2's per-head update is `ssd_step` (ops/ssd.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.registry import Backend, BackendRegistry


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                               dt_bias: Optional[Tensor] = None,
                               dt_softplus: bool = False) -> tuple[Tensor, Tensor]:
    """The spec, in PyTorch: -> (y (b, d) in x's dtype, new state (b, d, n)).

    Computes in fp32 (fp64 when the state or x is fp64) and is differentiable.
    """
    ct = torch.promote_types(torch.promote_types(x.dtype, torch.float32), state.dtype)  # compute dtype
    d = x.shape[1]
    delta = dt.to(ct)
    if dt_bias is not None:
        delta = delta + dt_bias.to(ct)
    if dt_softplus:
        delta = F.softplus(delta)                                            # Δ: (b, d)
    if B.dim() == 3:                                                         # (b, g, n) -> (b, d, n)
        B, C = B.repeat_interleave(d // B.shape[1], 1), C.repeat_interleave(d // C.shape[1], 1)
    else:                                                                    # (b, n) -> (b, 1, n)
        B, C = B[:, None], C[:, None]
    deltaA = torch.exp(delta[..., None] * A.to(ct))                          # Ā: (b, d, n)
    deltaB_x = delta[..., None] * B.to(ct) * x.to(ct)[..., None]             # B̄ x: (b, d, n)
    new_state = deltaA * state.to(ct) + deltaB_x                             # (b, d, n)
    y = (new_state * C.to(ct)).sum(-1)                                       # (b, d)
    if D is not None:
        y = y + D.to(ct) * x.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype), new_state


def check_state_update_inputs(state, x, dt, A, B, C, D=None, z=None, dt_bias=None) -> None:
    def fail(msg: str):
        raise ValueError(f"selective_state_update: {msg}")

    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C),
                    ("D", D), ("z", z), ("dt_bias", dt_bias)):
        if t is None and name in ("D", "z", "dt_bias"):
            continue
        if not isinstance(t, Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point() or t.is_complex():
            fail(f"{name} must be a real floating-point tensor, got {t.dtype}")
        if t.device != state.device:
            fail(f"{name} is on {t.device} but state is on {state.device}; put all inputs on one device")
    if state.dim() != 3:
        fail(f"state must be (batch, d, d_state), got shape {tuple(state.shape)}")
    b, d, n = state.shape
    expected = [("x", x, (b, d)), ("dt", dt, (b, d)), ("A", A, (d, n)), ("D", D, (d,)),
                ("z", z, (b, d)), ("dt_bias", dt_bias, (d,))]
    for name, t, shape in expected:
        if t is not None and tuple(t.shape) != shape:
            fail(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if B.dim() not in (2, 3):
        fail(f"B/C must be 2-D (b, n) or 3-D (b, g, n), got {B.dim()}-D")
    if B.shape != C.shape:
        fail(f"B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    if B.dim() == 2 and tuple(B.shape) != (b, n):
        fail(f"B/C must be (batch={b}, d_state={n}) or (batch, groups, d_state), got {tuple(B.shape)}")
    if B.dim() == 3 and (B.shape[0] != b or B.shape[2] != n or B.shape[1] == 0 or d % B.shape[1]):
        fail(f"B/C must be (batch={b}, groups dividing d={d}, d_state={n}), got {tuple(B.shape)}")


REGISTRY = BackendRegistry("selective_state_update", Backend(
    "ref", selective_state_update_ref, lambda device: None, "PyTorch reference (the spec)"))
register_state_update_backend = REGISTRY.register
available_state_update_backends = REGISTRY.available


def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                           dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                           backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One decoding step of the selective SSM (see the module docstring for shapes and maths).

    Returns (y (b, d) in x's dtype, new state (b, d, n), fp32 unless the inputs are fp64); `state`
    is left unchanged. backend: "auto" | "ref" | "cpu" | whatever is registered.
    """
    check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    impl = REGISTRY.resolve(backend, state.device)
    return impl.fn(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
