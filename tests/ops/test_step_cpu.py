"""The fused CPU decode-step backends against their reference twins, and inside the model."""
import pytest
import torch

from mambakit.ops import causal_conv1d_step, cpu_kernels
from tests.conftest import tiny_mamba

pytestmark = pytest.mark.skipif(cpu_kernels.available(torch.device("cpu")) is not None,
                                reason="no C++ compiler")


@pytest.mark.parametrize("b,d,k", [(1, 5, 4), (3, 24, 4), (2, 7, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_step_matches_reference(b, d, k, with_bias, activation):
    xz = torch.randn(b, 2 * d)                        # x is a strided view, as in the mixer
    state, w = torch.randn(b, d, k - 1), torch.randn(d, k)
    bias = torch.randn(d) if with_bias else None
    before = state.clone()
    y, new = causal_conv1d_step(xz[:, :d], state, w, bias, activation=activation, backend="cpu")
    y_ref, new_ref = causal_conv1d_step(xz[:, :d], state, w, bias, activation=activation, backend="ref")
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new, new_ref)
    assert torch.equal(state, before)


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
