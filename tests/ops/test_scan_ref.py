"""The reference scan against an independent naive computation, and its state contract."""
import pytest
import torch
import torch.nn.functional as F

from mambakit.ops import selective_scan, selective_scan_ref, selective_state_update


def random_inputs(b=2, d=5, l=7, n=3, groups=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc = (b, n, l) if groups is None else (b, groups, n, l)
    return dict(u=r(b, d, l), delta=r(b, d, l), A=-torch.rand(d, n, generator=g) - 0.1,
                B=r(*bc), C=r(*bc), D=r(d), z=r(b, d, l), delta_bias=r(d))


def naive(u, delta, A, B, C, D, z, delta_bias):
    """Closed form by unrolling: h_t = sum_{s<=t} (prod_{s<r<=t} exp(Δ_r A)) Δ_s B_s u_s."""
    b, d, l = u.shape
    delta = F.softplus(delta + delta_bias[:, None])
    if B.dim() == 4:
        B = B.repeat_interleave(d // B.shape[1], 1)
        C = C.repeat_interleave(d // C.shape[1], 1)
    else:
        B, C = B[:, None].expand(-1, d, -1, -1), C[:, None].expand(-1, d, -1, -1)
    y = torch.zeros(b, d, l)
    for t in range(l):
        h = torch.zeros(b, d, A.shape[1])
        for s in range(t + 1):
            decay = torch.exp(delta[:, :, s + 1:t + 1, None].sum(2) * A)  # prod of exp = exp of sum
            h = h + decay * delta[:, :, s, None] * B[..., s] * u[:, :, s, None]
        y[:, :, t] = (h * C[..., t]).sum(-1)
    return (y + D[:, None] * u) * F.silu(z)


@pytest.mark.parametrize("groups", [None, 1, 5])
def test_reference_equals_naive_unrolled_sum(groups):
    x = random_inputs(groups=groups)
    out = selective_scan(**x, delta_softplus=True, backend="ref")
    torch.testing.assert_close(out, naive(**x), atol=1e-5, rtol=1e-5)


def test_last_state_and_split_with_initial_state():
    x = random_inputs(l=9)
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="ref")
    cut = 4

    def part(sl):
        return {k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}

    o1, h1 = selective_scan(**part(slice(0, cut)), delta_softplus=True, return_last_state=True)
    o2, h2 = selective_scan(**part(slice(cut, None)), delta_softplus=True, return_last_state=True,
                            initial_state=h1)
    torch.testing.assert_close(torch.cat([o1, o2], -1), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2, last, atol=1e-5, rtol=1e-5)
    assert last.shape == (2, 5, 3) and last.dtype == torch.float32


def test_recurrent_step_equals_scan():
    x = random_inputs(l=6)
    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    h = torch.zeros(2, 5, 3)
    for t in range(6):
        y, h = selective_state_update(h, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t],
                                      x["C"][..., t], x["D"], x["z"][..., t], dt_bias=x["delta_bias"],
                                      dt_softplus=True, backend="ref")
        torch.testing.assert_close(y, out[..., t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, last)


def test_reset_equals_separate_documents():
    x = random_inputs(b=1, l=10)
    reset = torch.zeros(1, 10, dtype=torch.bool)
    reset[0, 6] = True
    packed = selective_scan(**x, delta_softplus=True, reset=reset)
    first = selective_scan(**{k: (v[..., :6] if k in ("u", "delta", "B", "C", "z") else v)
                              for k, v in x.items()}, delta_softplus=True)
    second = selective_scan(**{k: (v[..., 6:] if k in ("u", "delta", "B", "C", "z") else v)
                               for k, v in x.items()}, delta_softplus=True)
    torch.testing.assert_close(packed, torch.cat([first, second], -1), atol=1e-6, rtol=1e-6)


def test_bf16_inputs_return_bf16():
    x = {k: v.bfloat16() for k, v in random_inputs().items()}
    out = selective_scan(**x, delta_softplus=True)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("change,match", [
    (dict(u=torch.randn(2, 5)), "u must be"),
    (dict(delta=torch.randn(2, 5, 8)), "delta must have"),
    (dict(A=torch.randn(4, 3)), "A must be"),
    (dict(B=torch.randn(2, 3, 8)), "B must be"),
    (dict(C=torch.randn(2, 2, 3, 7)), "groups, which must divide"),
    (dict(D=torch.randn(4)), "D must have shape"),
    (dict(u=torch.randint(0, 3, (2, 5, 7))), "floating-point"),
])
def test_bad_inputs_raise_clear_errors(change, match):
    x = random_inputs()
    x.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan(**x)


def test_reference_gradcheck_in_float64():
    """The spec computes in fp64 for fp64 inputs, so its gradients check against finite differences
    (output and final state, through every input, with an initial state and a reset)."""
    x = {k: v.double().requires_grad_() for k, v in random_inputs(b=1, d=2, l=4, n=2).items()}
    h0 = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
    reset = torch.tensor([[False, False, True, False]])

    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True, initial_state=h0)
    assert out.dtype == last.dtype == torch.float64
    names = list(x)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_ref(**dict(zip(names, a[:-1])), delta_softplus=True,
                                      return_last_state=True, initial_state=a[-1], reset=reset),
        (*x.values(), h0))
