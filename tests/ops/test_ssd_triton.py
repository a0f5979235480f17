"""The Triton SSD forward (Mamba-2) against the sequential reference (the spec) and transformers'
Mamba-2 chunk scan (outside reference): outputs and final states on awkward shapes, packed
documents, carried states, Δ limits, fp64/bf16; under autograd it defers to the chunked torch form.

Without a GPU the kernel runs on CPU tensors under Triton's interpreter (tests/conftest.py); chunks
are shrunk to 16 positions so the test sequences cross several of them.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

from mambakit.ops import ssd_scan, ssd_triton  # noqa: E402
from mambakit.ops.ssd import REGISTRY  # noqa: E402
from tests.ops.test_ssd import CASES, make_inputs, run  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch):
    monkeypatch.setattr(ssd_triton, "CHUNK", 16)


def forward(backend, x, device="cpu", **kw):
    with torch.no_grad():
        y, final = ssd_scan(**{k: None if v is None else v.to(device) for k, v in x.items()},
                            return_final_states=True, backend=backend, **kw)
    return y.cpu(), final.cpu()


@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_triton_forward_matches_reference(case):
    x = make_inputs(**{**case, "dtype": torch.float32})
    y_ref, final_ref = forward("ref", x, dt_softplus=case["softplus"])
    y, final = forward("triton", x, DEVICE, dt_softplus=case["softplus"])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


def test_float64_and_dt_limit():
    x = make_inputs(2, 37, 4, 3, 2, 5, D="hp", h0=True, reset=True, dtype=torch.float64)
    for limit in ((0.0, math.inf), (0.2, 0.5)):
        y_ref, final_ref = forward("ref", x, dt_softplus=True, dt_limit=limit)
        y, final = forward("triton", x, DEVICE, dt_softplus=True, dt_limit=limit)
        assert y.dtype == final.dtype == torch.float64
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(final, final_ref, atol=1e-12, rtol=1e-12)


def test_bf16_inputs_give_bf16_outputs_close_to_fp32():
    x = make_inputs(1, 33, 4, 8, 2, 8, h0=True, dtype=torch.float32)
    want = forward("ref", x, dt_softplus=True)[0]
    low = {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in x.items()}
    y, final = forward("triton", low, DEVICE, dt_softplus=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    torch.testing.assert_close(y.float(), want, atol=0.1, rtol=0.05)


def test_matches_transformers_mamba2_chunk_scan():
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    x = make_inputs(2, 45, 6, 4, 3, 5, z=False, h0=True, dtype=torch.float32)
    want_y, want_final = mamba2_chunk_scan(
        x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=16, D=x["D"], dt_bias=x["dt_bias"],
        initial_states=x["initial_states"], dt_softplus=True, dt_limit=(0.0, math.inf),
        return_final_states=True)
    y, final = forward("triton", x, DEVICE, dt_softplus=True)
    torch.testing.assert_close(y, want_y, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(final, want_final, atol=2e-5, rtol=1e-5)


def test_under_autograd_it_is_the_chunked_form():
    x = make_inputs(2, 19, 3, 4, 1, 5, h0=True, reset=True)
    y, final, grads = run("triton", x)
    y_want, final_want, grads_want = run("chunked", x)
    torch.testing.assert_close(y, y_want, atol=0, rtol=0)
    torch.testing.assert_close(final, final_want, atol=0, rtol=0)
    for name, grad in grads_want.items():
        torch.testing.assert_close(grads[name], grad, atol=0, rtol=0, msg=name)


def test_auto_prefers_triton_on_cuda_only():
    assert REGISTRY.auto_order["cuda"][0] == "triton"
    assert "triton" not in REGISTRY.auto_order["cpu"]
