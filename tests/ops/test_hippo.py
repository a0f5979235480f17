"""HiPPO matrices, the NPLR/DPLR form of LegS, and the state-compresses-history demonstration."""
import math

import pytest
import torch

from mambakit.ops.discretize import zoh
from mambakit.ops.hippo import (
    dplr_legs_half,
    hippo_legs,
    hippo_legt,
    legendre,
    legs_encode,
    legs_reconstruct,
    nplr_legs,
    reconstruction_demo,
)

f64 = torch.float64


def test_legs_matrix_entries():
    A, B = hippo_legs(4)
    assert A[2, 2] == -3 and A[0, 3] == 0
    assert math.isclose(A[3, 1].item(), -math.sqrt(7) * math.sqrt(3))
    torch.testing.assert_close(B, torch.sqrt(torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=f64)))
    assert torch.linalg.eigvals(A).real.max() < 0


@pytest.mark.parametrize("N", [1, 6, 9])
def test_nplr_legs_rebuilds_A_and_B(N):
    A, B = hippo_legs(N)
    Lambda, P, Bt, V = nplr_legs(N)
    torch.testing.assert_close(V @ V.conj().T, torch.eye(N, dtype=V.dtype))
    rebuilt = V @ (torch.diag(Lambda) - P[:, None] * P.conj()[None, :]) @ V.conj().T
    torch.testing.assert_close(rebuilt.real, A)
    assert rebuilt.imag.abs().max() < 1e-10
    torch.testing.assert_close((V @ Bt).real, B)
    torch.testing.assert_close(Lambda.real, torch.full((N,), -0.5, dtype=f64))


def test_half_spectrum_is_the_upper_conjugate_half():
    Lambda, P, B = dplr_legs_half(8)
    full = nplr_legs(8)[0]
    assert Lambda.shape == (4,) and (Lambda.imag > 0).all()
    torch.testing.assert_close(torch.sort(full.imag).values, torch.sort(torch.cat([Lambda.imag, -Lambda.imag])).values)
    with pytest.raises(ValueError, match="even"):
        dplr_legs_half(5)


def test_legendre_values():
    x = torch.tensor([-1.0, 0.3, 1.0], dtype=f64)
    P = legendre(4, x)
    torch.testing.assert_close(P[2], (3 * x ** 2 - 1) / 2)
    torch.testing.assert_close(P[3], (5 * x ** 3 - 3 * x) / 2)


def smooth_signal(L):
    t = (torch.arange(L, dtype=f64) + 0.5) / L
    return torch.sin(6 * t) + 0.5 * torch.cos(15 * t ** 2)


def test_legs_reconstruction_error_falls_with_N():
    errors = [err for _, err in reconstruction_demo(smooth_signal(200), sizes=(4, 8, 16, 32)).values()]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 and errors[0] > 0.1


def test_legs_state_of_a_polynomial_is_exact():
    # a degree-2 polynomial sampled finely lies in the span of the first 3 Legendre functions
    L = 400
    s = (torch.arange(L, dtype=f64) + 0.5) / L
    f = 1 - 2 * s + 3 * s ** 2
    rec = legs_reconstruct(legs_encode(f, 6), L)
    assert (rec - f).abs().max() < 1e-2


def test_legt_state_reconstructs_the_recent_window():
    dt, L, N = 1 / 100, 200, 16      # window θ = 1 = 100 samples; the first 100 are forgotten
    t = (torch.arange(L, dtype=f64) + 1) * dt
    f = torch.sin(6 * t) + 0.5 * torch.cos(5 * t ** 2)
    A, B = hippo_legt(N)
    Ab, Bb = zoh(A, B, dt)
    c = torch.zeros(N, dtype=f64)
    for k in range(L):
        c = Ab @ c + Bb * f[k]
    x = (torch.arange(100, dtype=f64) + 0.5) / 100
    rec = (c * torch.sqrt(2 * torch.arange(N, dtype=f64) + 1)) @ legendre(N, 2 * x - 1)
    assert torch.sqrt(torch.mean((rec - f[100:]) ** 2)) < 1e-3


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="state size N must be >= 1"):
        hippo_legs(0)
