"""HiPPO (Gu et al. 2020): state matrices whose state is the best polynomial summary of the input.

The state c(t) ∈ R^N holds the coefficients of the input's history in the orthonormal Legendre
basis g_n = √(2n+1) P_n:
* LegS (scaled): history [0, t] under the uniform measure; c' = (1/t)(A c + B f) — timescale-free.
  A_nk = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k);  B_n = √(2n+1).
* LegT (translated): a sliding window [t − θ, t]; c' = (1/θ)(A c + B f).

S4 writes LegS as normal plus low rank (NPLR): A = S − P Pᵀ with P_n = √(n + ½) and
S = −½ I + (skew-symmetric), so S = V diag(Λ) V* with V unitary (eigh of the Hermitian −iS) and
A = V (diag(Λ) − P̃ P̃*) V*, P̃ = V* P: diagonal plus low rank (DPLR) in the basis V.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mambakit.checks import require_int
from mambakit.ops.discretize import zoh


def _check_n(N: int) -> None:
    require_int("HiPPO state size N", N)


def hippo_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (A (N, N), B (N,)), sign convention c' = (1/t)(A c + B f) (A is stable)."""
    _check_n(N)
    n = torch.arange(N, dtype=dtype)
    R = torch.sqrt(2 * n + 1)
    A = -torch.tril(R[:, None] * R[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, R.clone()


def hippo_legt(N: int, theta: float = 1.0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegT for a window of length θ: (A (N, N), B (N,)), c' = A c + B f.

    A_nk = −(1/θ)√(2n+1)√(2k+1) · (1 if n ≥ k else (−1)^{n−k}),  B_n = (1/θ)√(2n+1); the state
    then holds the coefficients of f(t − θ + θx), x ∈ [0, 1], in the basis √(2n+1) P_n(2x − 1).
    """
    _check_n(N)
    n = torch.arange(N, dtype=dtype)
    R = torch.sqrt(2 * n + 1)
    sign = torch.where(n[:, None] >= n[None, :], torch.ones(()), (-1.0) ** (n[:, None] - n[None, :]))
    return -R[:, None] * sign.to(dtype) * R[None, :] / theta, R / theta


def nplr_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LegS in DPLR form: (Λ (N,), P̃ (N,), B̃ (N,), V (N, N)), complex, A = V(diag(Λ) − P̃P̃*)V*.

    Re Λ = −½ exactly; the eigenvalues come in conjugate pairs, sorted by imaginary part.
    """
    A, B = hippo_legs(N, dtype)
    P = torch.sqrt(torch.arange(N, dtype=dtype) + 0.5)
    S = A + P[:, None] * P[None, :]                                     # −½ I + skew
    skew = S + 0.5 * torch.eye(N, dtype=dtype)
    # −i·skew is Hermitian: eigh gives real w and unitary V with skew = V diag(i w) V*.
    w, V = torch.linalg.eigh(-1j * skew.to(torch.promote_types(dtype, torch.complex64)))
    Lambda = torch.complex(torch.full_like(w, -0.5), w)
    Vh = V.conj().T
    return Lambda, Vh @ P.to(V.dtype), Vh @ B.to(V.dtype), V


def dplr_legs_half(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """The N/2 eigen-pairs with Im Λ > 0 of `nplr_legs(N)`: (Λ, P̃, B̃), each (N/2,) complex.

    A real SSM's conjugate pair contributes 2·Re of one member, so S4 keeps only half the state.
    """
    if N % 2:
        raise ValueError(f"S4 keeps conjugate pairs of the HiPPO spectrum: d_state must be even, got {N}")
    Lambda, P, B, _ = nplr_legs(N, dtype)
    return Lambda[N // 2:], P[N // 2:], B[N // 2:]


def legendre(N: int, x: Tensor) -> Tensor:
    """P_0(x) … P_{N−1}(x) by Bonnet's recursion (n+1)P_{n+1} = (2n+1)x P_n − n P_{n−1}: (N, *x.shape)."""
    out = [torch.ones_like(x), x]
    for n in range(1, N - 1):
        out.append(((2 * n + 1) * x * out[n] - n * out[n - 1]) / (n + 1))
    return torch.stack(out[:N])


def legs_encode(f: Tensor, N: int) -> Tensor:
    """Run the LegS ODE over samples f (..., L), f_k held on (k−1, k]: the final state c (..., N).

    In log-time τ = log t the dynamics c' = (1/t)(A c + B f) become the LTI dc/dτ = A c + B f, so
    ZOH with the step Δ_k = log(k/(k−1)) integrates a held input exactly. The first step is
    infinitely long (from t = 0): it lands on the steady state −A⁻¹B f_1.
    """
    A, B = hippo_legs(N, f.dtype)
    L = f.shape[-1]
    k = torch.arange(2, L + 1, dtype=f.dtype)
    Ab, Bb = zoh(A.expand(L - 1, N, N), B.expand(L - 1, N), torch.log(k / (k - 1)))  # (L-1, N, N), (L-1, N)
    c = -torch.linalg.solve(A, B) * f[..., :1]                          # (..., N)
    for i in range(L - 1):
        c = c @ Ab[i].T + f[..., i + 1, None] * Bb[i]
    return c


def legs_reconstruct(c: Tensor, L: int) -> Tensor:
    """The history f(s), s ∈ [0, t], from the LegS state c (..., N): Σ_n c_n √(2n+1) P_n(2s/t − 1)."""
    N = c.shape[-1]
    s = (torch.arange(1, L + 1, dtype=c.dtype) - 0.5) / L               # sample centres, in (0, 1)
    basis = legendre(N, 2 * s - 1) * torch.sqrt(2 * torch.arange(N, dtype=c.dtype) + 1)[:, None]
    return c @ basis                                                    # (..., L)


def reconstruction_demo(f: Tensor, sizes: tuple[int, ...] = (4, 8, 16, 32, 64)) -> dict[int, tuple[Tensor, float]]:
    """Compress f (L,) into a HiPPO-LegS state of each size N and rebuild it from that state alone.

    Returns {N: (reconstruction (L,), RMS error)}; the error falls as N grows for smooth f.
    """
    f = f.to(torch.float64)
    out = {}
    for N in sizes:
        rec = legs_reconstruct(legs_encode(f, N), f.shape[-1])
        out[N] = (rec, float(torch.sqrt(torch.mean((rec - f) ** 2))))
    return out
