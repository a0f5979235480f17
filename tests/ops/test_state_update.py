"""selective_state_update: the reference against mamba_ssm's formula, dispatch and bad input."""
import pytest
import torch
import torch.nn.functional as F

from mambakit.ops import available_state_update_backends, selective_scan_ref, selective_state_update


def make_inputs(b=2, d=6, n=5, groups=None, optional=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    bc = (b, n) if groups is None else (b, groups, n)
    x = dict(state=r(b, d, n), x=r(b, d), dt=r(b, d), A=-torch.rand(d, n, generator=g) - 0.1,
             B=r(*bc), C=r(*bc))
    if optional:
        x.update(D=r(d), z=r(b, d), dt_bias=r(d))
    return x


def mamba_ssm_formula(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """mamba_ssm's selective_state_update_ref, written out here (einsum form; out of place)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    dt = F.softplus(dt) if dt_softplus else dt
    if B.dim() == 3:                                        # grouped: channel c uses group c // (d/g)
        rep = x.shape[1] // B.shape[1]
        B, C = B.repeat_interleave(rep, 1), C.repeat_interleave(rep, 1)
        dB = torch.einsum("bd,bdn->bdn", dt, B)
    else:
        dB = torch.einsum("bd,bn->bdn", dt, B)
    state = state * torch.exp(dt[..., None] * A) + dB * x[..., None]
    out = torch.einsum("bdn,bdn->bd", state, C) if C.dim() == 3 else torch.einsum("bdn,bn->bd", state, C)
    if D is not None:
        out = out + x * D
    return (out if z is None else out * F.silu(z)), state


# Every backend that runs on CPU here ("triton" does under its interpreter, see tests/conftest.py).
BACKENDS = sorted(k for k, why in available_state_update_backends("cpu").items() if why is None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,d,n,groups", [(1, 5, 1, None), (3, 24, 16, None), (2, 6, 3, 3), (2, 7, 5, 7)])
@pytest.mark.parametrize("optional,softplus", [(True, True), (False, False)])
def test_every_backend_matches_mamba_ssm_formula(backend, b, d, n, groups, optional, softplus):
    x = make_inputs(b, d, n, groups, optional)
    before = x["state"].clone()
    y, new = selective_state_update(**x, dt_softplus=softplus, backend=backend)
    y_want, new_want = mamba_ssm_formula(**x, dt_softplus=softplus)
    torch.testing.assert_close(y, y_want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, new_want, atol=1e-5, rtol=1e-5)
    assert torch.equal(x["state"], before)                  # the caller's state is left untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views_and_bf16_inputs(backend):
    """The mixer passes views into matmul outputs, and bf16 activations with an fp32 state."""
    b, d, n, r = 3, 10, 4, 2
    xz, x_dbl = torch.randn(b, 2 * d), torch.randn(b, r + 2 * n)
    x = make_inputs(b, d, n)
    x.update(x=xz[:, :d], z=xz[:, d:], B=x_dbl[:, r:r + n], C=x_dbl[:, r + n:])
    y, new = selective_state_update(**x, dt_softplus=True, backend=backend)
    y_want, new_want = mamba_ssm_formula(**{k: v.contiguous() for k, v in x.items()}, dt_softplus=True)
    torch.testing.assert_close(y, y_want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, new_want, atol=1e-5, rtol=1e-5)
    low = {k: (v if k in ("state", "A", "D", "dt_bias") else v.bfloat16()) for k, v in x.items()}
    y16, new16 = selective_state_update(**low, dt_softplus=True, backend=backend)
    assert y16.dtype == torch.bfloat16 and new16.dtype == torch.float32
    want16 = mamba_ssm_formula(**{k: v.float() for k, v in low.items()}, dt_softplus=True)
    torch.testing.assert_close(y16.float(), want16[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(new16, want16[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_flow_through_every_backend(backend):
    x = {k: v.double().requires_grad_() for k, v in make_inputs(2, 4, 3, groups=2).items()}
    y, new = selective_state_update(**x, dt_softplus=True, backend=backend)
    grads = torch.autograd.grad((y.sum() + new.sum()), list(x.values()))
    y_want, new_want = mamba_ssm_formula(**x, dt_softplus=True)
    want = torch.autograd.grad((y_want.sum() + new_want.sum()), list(x.values()))
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp)


def test_one_step_equals_a_scan_of_length_one():
    x = make_inputs(2, 6, 4, groups=2)
    y, new = selective_state_update(**x, dt_softplus=True)
    out, last = selective_scan_ref(x["x"][..., None], x["dt"][..., None], x["A"], x["B"][..., None],
                                   x["C"][..., None], x["D"], x["z"][..., None], x["dt_bias"],
                                   delta_softplus=True, return_last_state=True,
                                   initial_state=x["state"])
    torch.testing.assert_close(y, out[..., 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, last, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change,message", [
    (dict(x=torch.zeros(2, 5)), r"x must have shape \(2, 6\), got \(2, 5\)"),
    (dict(A=torch.zeros(6, 4)), r"A must have shape \(6, 5\)"),
    (dict(B=torch.zeros(2, 4, 5), C=torch.zeros(2, 4, 5)), r"B/C must be \(batch=2, groups dividing d=6"),
    (dict(C=torch.zeros(2, 4)), r"B and C must have the same shape"),
    (dict(z=torch.zeros(2, 6, dtype=torch.int64)), r"z must be a real floating-point tensor"),
    (dict(state=torch.zeros(2, 6)), r"state must be \(batch, d, d_state\)"),
])
def test_bad_input_names_the_problem(change, message):
    with pytest.raises(ValueError, match="selective_state_update: " + message):
        selective_state_update(**{**make_inputs(), **change})


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown selective_state_update backend 'gpu'.*'cpu'.*'ref'"):
        selective_state_update(**make_inputs(), backend="gpu")
