"""Recurrent == convolutional (naive, FFT) views of random LTI SSMs; S4 and S4D kernels == powers of A̅."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambakit.ops.discretize import bilinear, zoh_diag
from mambakit.ops.hippo import dplr_legs_half
from mambakit.ops.ssm_kernel import (
    c_tilde,
    c_tilde_dplr,
    causal_conv_fft,
    causal_conv_ref,
    diag_rank1_dense,
    dplr_bilinear,
    dplr_dense,
    dplr_kernel,
    krylov,
    lti_final_state,
    lti_free_response,
    ssm_kernel_naive,
    ssm_recurrent,
    vandermonde_kernel,
)

f64, c128 = torch.float64, torch.complex128


def random_lti(h, n, dense, dtype=f64, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dense:
        Ab = torch.randn(h, n, n, generator=g, dtype=f64)
        Ab = Ab / (torch.linalg.matrix_norm(Ab, ord=2)[:, None, None] * 1.1)   # spectral radius < 1
    else:
        Ab = torch.rand(h, n, generator=g, dtype=f64) * 1.8 - 0.9
    Bb, C = torch.randn(h, n, generator=g, dtype=f64), torch.randn(h, n, generator=g, dtype=f64)
    D = torch.randn(h, generator=g, dtype=f64)
    return Ab.to(dtype), Bb.to(dtype), C.to(dtype), D


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("b,h,n,l", [(1, 1, 1, 1), (2, 3, 4, 7), (1, 5, 3, 33), (3, 2, 6, 17)])
def test_recurrent_equals_convolution(dense, b, h, n, l):
    Ab, Bb, C, D = random_lti(h, n, dense)
    u = torch.randn(b, h, l, dtype=f64)
    y_rec, h_last = ssm_recurrent(Ab, Bb, C, D, u)
    K = ssm_kernel_naive(Ab, Bb, C, l)
    torch.testing.assert_close(causal_conv_ref(u, K, D), y_rec)
    torch.testing.assert_close(causal_conv_fft(u, K, D), y_rec)
    torch.testing.assert_close(lti_final_state(Ab, Bb, u), h_last)


@settings(max_examples=25, deadline=None)
@given(l=st.integers(1, 40), n=st.integers(1, 5), b=st.integers(1, 3), dense=st.booleans())
def test_fft_conv_equals_direct_conv_any_length(l, n, b, dense):
    Ab, Bb, C, D = random_lti(2, n, dense)
    u = torch.randn(b, 2, l, dtype=f64)
    K = ssm_kernel_naive(Ab, Bb, C, l)
    torch.testing.assert_close(causal_conv_fft(u, K, D), causal_conv_ref(u, K, D))


@pytest.mark.parametrize("dense", [True, False])
def test_initial_state_terms_match_recurrence(dense):
    Ab, Bb, C, D = random_lti(3, 4, dense, dtype=c128)
    u = torch.randn(2, 3, 11, dtype=f64)
    h0 = torch.randn(2, 3, 4, dtype=c128)
    y_rec, h_last = ssm_recurrent(Ab, Bb, C, D, u, h0)
    y = causal_conv_ref(u.to(c128), ssm_kernel_naive(Ab, Bb, C, 11), D) + lti_free_response(Ab, C, h0, 11)
    torch.testing.assert_close(y, y_rec)
    torch.testing.assert_close(lti_final_state(Ab, Bb, u, h0), h_last)


def test_krylov_doubling_equals_explicit_powers():
    Ab, Bb, _, _ = random_lti(2, 3, dense=True)
    K = krylov(Ab, Bb, 13)
    for k in (0, 1, 5, 12):
        torch.testing.assert_close(K[:, k], torch.einsum("hnm,hm->hn", torch.linalg.matrix_power(Ab, k), Bb))


def explicit_kernel(Ab, Bb, C, L):
    return torch.stack([torch.einsum("hn,hnm,hm->h", C, torch.linalg.matrix_power(Ab, k), Bb)
                        for k in range(L)], dim=-1)


@pytest.mark.parametrize("L", [1, 8, 15, 16])
def test_s4_dplr_kernel_equals_powers_of_Abar(L):
    h, n = 3, 4
    g = torch.Generator().manual_seed(1)
    Lambda, P, B = dplr_legs_half(2 * n)
    Lambda, P, B = (x.expand(h, n).clone() for x in (Lambda, P, B))
    P = P + 0.1 * torch.randn(h, n, generator=g, dtype=c128)           # Q ≠ P: the general DPLR case
    Q = P + 0.1 * torch.randn(h, n, generator=g, dtype=c128)
    C = torch.randn(h, n, generator=g, dtype=c128)
    dt = torch.tensor([0.01, 0.1, 0.5], dtype=f64)
    A = dplr_dense(Lambda, P, Q)
    Ab, Bb = bilinear(A, B, dt)
    K = dplr_kernel(Lambda, P, Q, B, c_tilde(Ab, C, L), dt, L)
    torch.testing.assert_close(K, explicit_kernel(Ab, Bb, C, L))


def _random_dplr(h, n, seed):
    g = torch.Generator().manual_seed(seed)
    Lambda, P, B = dplr_legs_half(2 * n)
    Lambda, P, B = (x.expand(h, n).clone() for x in (Lambda, P, B))
    P = P + 0.1 * torch.randn(h, n, generator=g, dtype=c128)
    Q = P + 0.1 * torch.randn(h, n, generator=g, dtype=c128)           # Q ≠ P: the general DPLR case
    C = torch.randn(h, n, generator=g, dtype=c128)
    return Lambda, P, Q, B, C, torch.tensor([0.01, 0.1, 0.5], dtype=f64)[:h]


def test_dplr_bilinear_is_the_dense_bilinear_solve():
    """The Sherman–Morrison form (diagonal plus rank one) against torch.linalg.solve on the dense A."""
    Lambda, P, Q, B, _, dt = _random_dplr(3, 6, seed=2)
    a, x, y, Bb = dplr_bilinear(Lambda, P, Q, B, dt)
    Ab_ref, Bb_ref = bilinear(dplr_dense(Lambda, P, Q), B, dt)
    torch.testing.assert_close(diag_rank1_dense(a, x, y), Ab_ref)
    torch.testing.assert_close(Bb, Bb_ref)


@pytest.mark.parametrize("L", [1, 2, 15, 16, 37])
def test_c_tilde_dplr_equals_dense_matrix_powers(L, monkeypatch):
    Lambda, P, Q, B, C, dt = _random_dplr(3, 5, seed=3)
    a, x, y, _ = dplr_bilinear(Lambda, P, Q, B, dt)
    Ab, _ = bilinear(dplr_dense(Lambda, P, Q), B, dt)
    expected = C - torch.einsum("hn,hnm->hm", C, torch.linalg.matrix_power(Ab, L))
    torch.testing.assert_close(c_tilde_dplr(a, x, y, C, L), expected)
    # past the sequential limit it switches to dense squaring: the same values
    monkeypatch.setattr("mambakit.ops.ssm_kernel.SEQUENTIAL_C_TILDE_MAX_LENGTH", 0)
    torch.testing.assert_close(c_tilde_dplr(a, x, y, C, L), expected)


def test_s4d_vandermonde_kernel_equals_powers_of_Abar():
    h, n, L = 2, 5, 19
    A = torch.complex(-torch.rand(h, n, dtype=f64) - 0.1, torch.randn(h, n, dtype=f64) * 4)
    B, C = torch.randn(h, n, dtype=c128), torch.randn(h, n, dtype=c128)
    dt = torch.tensor([0.05, 0.3], dtype=f64)
    Ab, Bb = zoh_diag(A, B, dt[:, None])
    K = vandermonde_kernel(A, B, C, dt, L)
    torch.testing.assert_close(K, explicit_kernel(torch.diag_embed(Ab), Bb, C, L))
    torch.testing.assert_close(K, ssm_kernel_naive(Ab, Bb, C, L))
