"""S4/S4D layers: LSSL mode switch (conv == recurrent), prefill + step == forward, padding, checks."""
import pytest
import torch

from mambakit.modules.s4 import S4DMixer, S4Mixer, conj_complete
from mambakit.ops.discretize import bilinear
from mambakit.ops.hippo import hippo_legs, nplr_legs
from mambakit.ops.ssm_kernel import dplr_dense, ssm_kernel_naive

LAYERS = {
    "s4": lambda: S4Mixer(6, d_state=8, dt_min=0.01, dt_max=0.5),
    "s4d-lin": lambda: S4DMixer(6, d_state=8, dt_min=0.01, dt_max=0.5, init="lin"),
    "s4d-inv": lambda: S4DMixer(6, d_state=8, dt_min=0.01, dt_max=0.5, init="inv"),
}


@pytest.fixture(params=sorted(LAYERS))
def layer(request):
    return LAYERS[request.param]()


@pytest.mark.parametrize("b,l", [(1, 1), (2, 17), (3, 32)])
def test_conv_mode_equals_recurrent_mode(layer, b, l):
    x = torch.randn(b, l, 6)
    with torch.no_grad():
        conv = layer(x)
        layer.mode = "recurrent"
        rec = layer(x)
        state = layer.allocate_state(b)
        steps = torch.stack([layer.step(x[:, t], state) for t in range(l)], 1)
    torch.testing.assert_close(rec, conv, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(steps, conv, atol=2e-5, rtol=1e-4)


def test_layer_kernel_equals_powers_of_its_discrete_matrices(layer):
    with torch.no_grad():
        Ab, Bb, C2 = layer.discrete()
        torch.testing.assert_close(layer.kernel(21), ssm_kernel_naive(Ab, Bb, C2, 21).real,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_prefill_then_step_equals_forward(layer, mode):
    x = torch.randn(2, 15, 6)
    layer.mode = mode
    with torch.no_grad():
        full = layer(x)
        state = layer.allocate_state(2)
        first = layer(x[:, :5], state)
        second = layer(x[:, 5:9], state)          # chunked prefill continues from the state
        rest = torch.stack([layer.step(x[:, t], state) for t in range(9, 15)], 1)
    torch.testing.assert_close(torch.cat([first, second, rest], 1), full, atol=2e-5, rtol=1e-4)


def test_left_padding_is_exact(layer):
    x = torch.randn(1, 7, 6)
    padded = torch.cat([torch.randn(1, 3, 6), x], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    with torch.no_grad():
        torch.testing.assert_close(layer(padded, attention_mask=mask)[:, 3:], layer(x), atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter(layer):
    layer(torch.randn(2, 9, 6)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_s4_init_is_hippo_and_s4d_inits_differ():
    s4 = S4Mixer(4, d_state=8)
    assert torch.allclose(torch.exp(s4.log_A_real), torch.full((4, 4), 0.5))
    assert (s4.A_imag > 0).all()
    lin, inv = S4DMixer(4, 8, init="lin"), S4DMixer(4, 8, init="inv")
    torch.testing.assert_close(lin.A_imag[0], torch.pi * torch.arange(4.0))
    assert not torch.allclose(lin.A_imag, inv.A_imag)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="even"):
        S4Mixer(4, d_state=7)
    with pytest.raises(ValueError, match="'lin' or 'inv'"):
        S4DMixer(4, 8, init="legs")
    layer = S4DMixer(4, 8)
    with pytest.raises(ValueError, match="mode must be"):
        layer.mode = "fft"
    with pytest.raises(ValueError, match=r"\(batch, length, 4\)"):
        layer(torch.randn(2, 3, 5))


@pytest.mark.parametrize("N", [8, 16])
def test_s4_at_init_is_hippo_legs(N):
    """The layer's SSM at init is HiPPO-LegS: its kernel equals the dense LegS SSM's, bilinear with
    the layer's Δ, computed by explicit powers (no DPLR, no Cauchy sums), for the same real C."""
    h, L = 3, 96
    torch.manual_seed(0)
    layer = S4Mixer(h, d_state=N, dt_min=1e-2, dt_max=2e-1)
    A, B = hippo_legs(N)                                                # (N, N), (N,) fp64
    c = torch.randn(h, N, dtype=torch.float64)                          # C in the Legendre basis
    V_half = nplr_legs(N)[3][:, N // 2:]                                # the eigenvectors the layer keeps
    with torch.no_grad():
        layer.C.copy_(torch.view_as_real((c.to(V_half.dtype) @ V_half).to(torch.complex64)))
        K = layer.kernel(L).double()                                    # (h, L)
        dt = layer.dt.double()
    Ab, Bb = bilinear(A.expand(h, N, N), B.expand(h, N), dt)
    expected = ssm_kernel_naive(Ab, Bb, c, L)                           # (h, L) fp64
    assert (K - expected).abs().max() <= 2e-6 * expected.abs().max()     # fp32: ~1e-6
    # and the continuous state matrix, taken back to the Legendre basis, is LegS's A itself
    W = conj_complete(V_half)                                           # (N, N) unitary
    Lambda, P = (conj_complete(torch.view_as_complex(x.detach()).to(torch.complex128)) for x in (
        torch.stack([-torch.exp(layer.log_A_real), layer.A_imag], -1), layer.P))
    A_layer = W @ dplr_dense(Lambda, P, P) @ W.conj().T                 # (h, N, N)
    assert A_layer.imag.abs().max() < 1e-5 * N
    torch.testing.assert_close(A_layer.real, A.expand(h, N, N), atol=1e-5 * N, rtol=1e-5)


def test_s4_b_clip_clamps_imaginary_b():
    exact, clipped = S4Mixer(2, d_state=64), S4Mixer(2, d_state=64, b_clip=2.0)
    B_exact, B_clip = torch.view_as_complex(exact.B), torch.view_as_complex(clipped.B)
    assert B_exact.imag.abs().max() > 2 and B_clip.imag.abs().max() <= 2
    torch.testing.assert_close(B_clip.real, B_exact.real)
    with pytest.raises(ValueError, match="b_clip"):
        S4Mixer(2, d_state=8, b_clip=0.0)
