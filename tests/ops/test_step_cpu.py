"""The fused CPU decode-step kernels against their reference twins, and inside the model."""
import pytest
import torch
import torch.nn.functional as F

from mambakit.ops import causal_conv1d_step, selective_state_step
from mambakit.ops.step_cpu import conv_step_cpu, fused_step_usable, ssm_step_cpu
from tests.conftest import tiny_mamba

pytestmark = pytest.mark.skipif(not fused_step_usable(torch.zeros(1)), reason="no C++ compiler")


@pytest.mark.parametrize("b,d,k", [(1, 5, 4), (3, 24, 4), (2, 7, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_step_matches_reference(b, d, k, with_bias):
    xz = torch.randn(b, 2 * d)                        # x is a strided view, as in the mixer
    state, w = torch.randn(b, d, k - 1), torch.randn(d, k)
    bias = torch.randn(d) if with_bias else None
    y, new = conv_step_cpu(xz[:, :d], state, w, bias)
    y_ref, new_ref = causal_conv1d_step(xz[:, :d], state, w, bias)
    torch.testing.assert_close(y, F.silu(y_ref), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new, new_ref)


@pytest.mark.parametrize("b,d,n", [(1, 5, 1), (3, 24, 16), (2, 7, 5)])
@pytest.mark.parametrize("with_optional", [True, False])
def test_ssm_step_matches_reference(b, d, n, with_optional):
    r = 3
    x_dbl = torch.randn(b, r + 2 * n)                 # B, C are views into x_proj's output
    state, x, dt = torch.randn(b, d, n), torch.randn(b, d), torch.randn(b, d)
    A_log = torch.rand(d, n).log()
    dt_bias, D = (torch.randn(d), torch.randn(d)) if with_optional else (None, None)
    z = torch.randn(b, 2 * d)[:, d:] if with_optional else None
    B, C = x_dbl[:, r:r + n], x_dbl[:, r + n:]
    y, new = ssm_step_cpu(state, x, dt, dt_bias, A_log, B, C, D, z)
    delta = F.softplus(dt + (dt_bias if dt_bias is not None else 0))
    y_ref, new_ref = selective_state_step(state, x, delta, -torch.exp(A_log), B, C, D, z)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, new_ref, atol=1e-5, rtol=1e-5)
    assert not torch.equal(new, state)                # the old state is left untouched


def test_model_decode_with_fused_step_equals_reference_step():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (3, 7))
    outs = {}
    with torch.inference_mode():
        for backend in ("auto", "ref"):
            model.set_scan_backend(backend)
            cache = model.allocate_cache(3)
            outs[backend] = torch.stack([model.step(ids[:, t], cache) for t in range(7)], 1)
    torch.testing.assert_close(outs["auto"], outs["ref"], atol=1e-5, rtol=1e-5)
