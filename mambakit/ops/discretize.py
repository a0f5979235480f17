"""The continuous SSM and its discretization with step Δ.

Continuous:  h'(t) = A h(t) + B x(t),   y(t) = C h(t) + D x(t)
Discrete:    h_k = A̅ h_{k-1} + B̅ x_k,   y_k = C h_k + D x_k

Glossary: n state size, A (n, n) dense or (n,) diagonal, B (n,) (one input channel) or (n, p),
C (n,), D scalar, Δ = dt. Leading dimensions broadcast (one SSM per channel: A (h, n), dt (h,)).

* zero-order hold (ZOH): the input is held constant over each step, which integrates exactly:
  A̅ = exp(ΔA),  B̅ = (ΔA)⁻¹(exp(ΔA) − I) ΔB.
* bilinear (Tustin): A̅ = (I − Δ/2 A)⁻¹(I + Δ/2 A),  B̅ = (I − Δ/2 A)⁻¹ ΔB  (S4's choice).

`simulate` integrates the continuous system with RK4 on a fine grid: the ground truth the
discrete models are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor


@dataclass
class ContinuousSSM:
    """One continuous SISO state-space model: A (n, n), B (n,), C (n,), D scalar."""

    A: Tensor
    B: Tensor
    C: Tensor
    D: Union[Tensor, float] = 0.0

    def zoh(self, dt: float) -> tuple[Tensor, Tensor]:
        return zoh(self.A, self.B, dt)

    def bilinear(self, dt: float) -> tuple[Tensor, Tensor]:
        return bilinear(self.A, self.B, dt)

    def simulate(self, x: Union[Tensor, Callable[[Tensor], Tensor]], dt: float, length: int | None = None,
                 substeps: int = 16) -> Tensor:
        return simulate(self.A, self.B, self.C, self.D, x, dt, length, substeps)


def _as_dt(dt: Union[Tensor, float], like: Tensor) -> Tensor:
    dt = torch.as_tensor(dt, dtype=like.real.dtype, device=like.device)
    if torch.any(dt <= 0):
        raise ValueError("discretization step dt must be > 0")
    return dt


def _column(B: Tensor, A: Tensor) -> tuple[Tensor, bool]:
    """B (..., n) or (..., n, p) -> (..., n, p), remembering whether to squeeze back."""
    if B.shape[-1] == A.shape[-1] and B.dim() == A.dim() - 1:
        return B[..., None], True
    if B.dim() == A.dim() and B.shape[-2] == A.shape[-1]:
        return B, False
    raise ValueError(f"B must be (..., n) or (..., n, p) for A of shape {tuple(A.shape)}, "
                     f"got {tuple(B.shape)}")


def _check_square(A: Tensor) -> None:
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"dense A must be (..., n, n), got {tuple(A.shape)}; "
                         f"use zoh_diag/bilinear_diag for a diagonal A (..., n)")


def zoh(A: Tensor, B: Tensor, dt: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Dense ZOH: A (..., n, n), B (..., n) or (..., n, p), dt scalar or (...,) -> (A̅, B̅).

    exp([[A, B], [0, 0]] Δ) = [[exp(ΔA), ∫₀^Δ exp(sA) ds B], [0, I]]: the top-right block is B̅
    without ever inverting ΔA, which is singular whenever A has a zero eigenvalue (Van Loan 1978).
    """
    _check_square(A)
    Bc, squeeze = _column(B, A)
    n, p = A.shape[-1], Bc.shape[-1]
    dt = _as_dt(dt, A)[..., None, None]
    batch = torch.broadcast_shapes(A.shape[:-2], Bc.shape[:-2], dt.shape[:-2])
    M = A.new_zeros(*batch, n + p, n + p, dtype=torch.promote_types(A.dtype, Bc.dtype))
    M[..., :n, :n] = A * dt
    M[..., :n, n:] = Bc * dt
    E = torch.linalg.matrix_exp(M)                                      # (..., n+p, n+p)
    Ab, Bb = E[..., :n, :n], E[..., :n, n:]
    return Ab, (Bb[..., 0] if squeeze else Bb)


def zoh_diag(A: Tensor, B: Tensor, dt: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Diagonal ZOH: A (..., n) real or complex, B (..., n), dt broadcastable to (..., 1) or scalar.

    B̅ = Δ · expm1(ΔA)/(ΔA) · B; expm1 keeps precision for small |ΔA| and the ratio's limit 1
    (at A = 0 the state integrates: B̅ = ΔB) is taken explicitly.
    """
    dt = _as_dt(dt, A)
    dtA = dt * A
    small = dtA.abs() < 1e-8
    safe = torch.where(small, torch.ones_like(dtA), dtA)
    phi = torch.where(small, 1 + dtA / 2, torch.expm1(safe) / safe)     # (e^z − 1)/z
    return torch.exp(dtA), dt * phi * B


def bilinear(A: Tensor, B: Tensor, dt: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Dense bilinear (Tustin): A (..., n, n), B (..., n) or (..., n, p) -> (A̅, B̅)."""
    _check_square(A)
    Bc, squeeze = _column(B, A)
    dt = _as_dt(dt, A)[..., None, None]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    left = eye - dt / 2 * A                                             # (..., n, n)
    Ab = torch.linalg.solve(left, eye + dt / 2 * A)
    Bb = torch.linalg.solve(left, (dt * Bc).to(left.dtype))
    return Ab, (Bb[..., 0] if squeeze else Bb)


def bilinear_diag(A: Tensor, B: Tensor, dt: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Diagonal bilinear: A (..., n), B (..., n) -> (A̅ (..., n), B̅ (..., n))."""
    dt = _as_dt(dt, A)
    left = 1 - dt / 2 * A
    return (1 + dt / 2 * A) / left, dt * B / left


def simulate(A: Tensor, B: Tensor, C: Tensor, D: Union[Tensor, float],
             x: Union[Tensor, Callable[[Tensor], Tensor]], dt: float, length: int | None = None,
             substeps: int = 16) -> Tensor:
    """Integrate the continuous SSM from h(0) = 0 with classical RK4, `substeps` per sample.

    A (n, n), B (n,), C (n,). `x` is either samples (..., L) — x[k] held over [kΔ, (k+1)Δ), the
    ZOH assumption, so ZOH-discretized models should match to RK4 accuracy at any Δ — or a function
    of time t (a tensor) returning (...,) inputs, integrated as a continuous signal.
    Returns y (..., L) with y[k] = C h((k+1)Δ) + D x[k] (x[k] := x((k+1)Δ) for a function).
    """
    _check_square(A)
    if callable(x):
        if length is None:
            raise ValueError("simulate: give `length` when x is a function of time")
        fn = x

        def inp(k: int, t: float) -> Tensor:
            return torch.as_tensor(fn(torch.tensor(t, dtype=A.dtype)), dtype=A.dtype)

        batch = inp(0, 0.0).shape
    else:
        length, batch = x.shape[-1], x.shape[:-1]

        def inp(k: int, t: float) -> Tensor:
            return x[..., k].to(A.dtype)                                # held over the whole step

    def f(h: Tensor, u: Tensor) -> Tensor:
        return h @ A.mT + u[..., None] * B

    h = A.new_zeros(*batch, A.shape[-1])                                # (..., n)
    tau = dt / substeps
    ys = []
    for k in range(length):
        for s in range(substeps):
            t = k * dt + s * tau
            u0, um, u1 = inp(k, t), inp(k, t + tau / 2), inp(k, t + tau)
            k1 = f(h, u0)
            k2 = f(h + tau / 2 * k1, um)
            k3 = f(h + tau / 2 * k2, um)
            k4 = f(h + tau * k3, u1)
            h = h + tau / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(h @ C.to(h.dtype) + D * inp(k, (k + 1) * dt))
    return torch.stack(ys, dim=-1)                                      # (..., L)
