"""Discretization: ZOH (dense and diagonal) and bilinear against each other and the continuous system."""
import pytest
import torch

from mambakit.ops.discretize import ContinuousSSM, bilinear, bilinear_diag, simulate, zoh, zoh_diag

f64 = torch.float64


def stable(n, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    M = torch.randn(n, n, generator=g, dtype=f64)
    return M - (torch.linalg.eigvals(M).real.max() + 0.5) * torch.eye(n, dtype=f64)


@pytest.mark.parametrize("complex_a", [False, True])
def test_zoh_diag_equals_matrix_exponential_formula(complex_a):
    A = -torch.rand(3, 5, dtype=f64) - 0.1
    if complex_a:
        A = torch.complex(A, torch.randn(3, 5, dtype=f64) * 3)
    B = torch.randn(3, 5, dtype=A.dtype)
    dt = torch.tensor([0.01, 0.3, 2.0], dtype=f64)
    Ab, Bb = zoh_diag(A, B, dt[:, None])
    for h in range(3):
        dA = dt[h] * torch.diag(A[h])
        expm = torch.linalg.matrix_exp(dA)
        # the textbook formula, safe here because A is invertible
        ref_B = torch.linalg.solve(dA, expm - torch.eye(5, dtype=A.dtype)) @ (dt[h] * B[h])
        torch.testing.assert_close(torch.diagonal(expm), Ab[h])
        torch.testing.assert_close(ref_B, Bb[h])
        dense_A, dense_B = zoh(torch.diag(A[h]), B[h], dt[h])
        torch.testing.assert_close(torch.diagonal(dense_A), Ab[h])
        torch.testing.assert_close(dense_B, Bb[h])


def test_zoh_handles_zero_eigenvalue():
    # A = 0 is a pure integrator: B̅ = ΔB, and the block exponential never inverts ΔA.
    A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=f64)   # singular, nilpotent
    B = torch.tensor([0.0, 1.0], dtype=f64)
    Ab, Bb = zoh(A, B, 0.5)
    torch.testing.assert_close(Ab, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=f64))
    torch.testing.assert_close(Bb, torch.tensor([0.125, 0.5], dtype=f64))
    Ad, Bd = zoh_diag(torch.tensor([0.0, -1e-12, -1.0], dtype=f64), torch.ones(3, dtype=f64), 0.5)
    torch.testing.assert_close(Bd, torch.tensor([0.5, 0.5, 1 - torch.exp(torch.tensor(-0.5)).item()],
                                                dtype=f64))
    assert torch.isfinite(Ad).all()


def test_bilinear_diag_matches_dense_and_zoh_to_second_order():
    A = -torch.rand(4, dtype=f64) - 0.5
    B = torch.randn(4, dtype=f64)
    Ad, Bd = bilinear_diag(A, B, 0.1)
    Adense, Bdense = bilinear(torch.diag(A), B, 0.1)
    torch.testing.assert_close(torch.diagonal(Adense), Ad)
    torch.testing.assert_close(Bdense, Bd)
    errs = [(bilinear_diag(A, B, dt)[0] - zoh_diag(A, B, dt)[0]).abs().max() for dt in (0.1, 0.05)]
    assert 6 < errs[0] / errs[1] < 10  # Tustin agrees with exp(ΔA) up to O(Δ³)


def run(Ab, Bb, C, D, x):
    h = torch.zeros(Ab.shape[0], dtype=f64)
    ys = []
    for xk in x:
        h = Ab @ h + Bb * xk
        ys.append(C @ h + D * xk)
    return torch.stack(ys)


def test_zoh_matches_simulation_for_held_input_at_any_step():
    ssm = ContinuousSSM(stable(4), torch.randn(4, dtype=f64), torch.randn(4, dtype=f64), 0.3)
    x = torch.randn(9, dtype=f64)
    for dt in (0.5, 0.05):
        y_true = ssm.simulate(x, dt, substeps=32)
        torch.testing.assert_close(run(*ssm.zoh(dt), ssm.C, ssm.D, x), y_true, atol=1e-8, rtol=1e-7)


def test_step_response_converges_to_continuous_as_dt_shrinks():
    ssm = ContinuousSSM(stable(3, 1), torch.randn(3, dtype=f64), torch.randn(3, dtype=f64))
    T = 2.0
    errors = []
    for L in (10, 20, 40):
        dt = T / L
        truth = simulate(ssm.A, ssm.B, ssm.C, 0.0, lambda t: torch.ones(()), dt, length=L, substeps=8)
        y = run(*ssm.bilinear(dt), ssm.C, 0.0, torch.ones(L, dtype=f64))
        errors.append((y - truth).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 1.8   # converges at least linearly in Δ


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dt must be > 0"):
        zoh(torch.eye(2), torch.ones(2), 0.0)
    with pytest.raises(ValueError, match="dense A"):
        bilinear(torch.ones(3), torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="B must be"):
        zoh(torch.eye(3), torch.ones(4), 0.1)
