"""`linear` for every weight format: the GEMV backend against the reference and torch's own int8 op."""
import pytest
import torch

from mambakit.modules.linear import quantize_int8
from mambakit.ops import linear
from mambakit.ops.linear import REGISTRY

BACKENDS = sorted(REGISTRY.available("cpu"))


def weights(fmt, n, k):
    w = torch.randn(n, k)
    if fmt == "int8":
        return quantize_int8(w)
    return (w if fmt == "fp32" else w.bfloat16()), None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("shape", [(1, 37), (3, 37), (2, 5, 64), (17, 19)])   # > 16 rows: GEMM path
def test_every_format_matches_the_dequantized_reference(backend, fmt, shape):
    k = shape[-1]
    w, scale = weights(fmt, 11, k)
    bias = torch.randn(11)
    x = torch.randn(*shape[:-1], 2 * k)[..., ::2]                              # strided rows
    y = linear(x, w, bias, scale, backend=backend)
    dense = w.float() * (scale[:, None] if scale is not None else 1)
    torch.testing.assert_close(y, x @ dense.T + bias, atol=1e-4, rtol=1e-4)
    xb = x.bfloat16()
    yb = linear(xb, w, None, scale, backend=backend)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), xb.float() @ dense.T, atol=0.1, rtol=2e-2)


def test_int8_gemv_equals_torch_weight_int8pack_mm():
    """torch's own weight-only int8 kernel (the same per-row-scale format) as the outside reference."""
    w8, scale = quantize_int8(torch.randn(45, 96))
    x = torch.randn(3, 96)
    torch.testing.assert_close(linear(x, w8, None, scale), torch._weight_int8pack_mm(x, w8, scale),
                               atol=1e-4, rtol=1e-4)


def test_quantize_int8_round_trips_within_half_a_step():
    w = torch.randn(7, 50)
    w8, scale = quantize_int8(w)
    assert w8.dtype == torch.int8 and w8.abs().max() == 127
    assert ((w8.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


def test_gradients_flow_through_the_auto_backend():
    w = torch.randn(6, 8, requires_grad=True)
    x = torch.randn(2, 8, requires_grad=True)
    linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.detach().sum(0).expand(2, 8))


@pytest.mark.parametrize("args,message", [
    (dict(weight=torch.zeros(4, 8, dtype=torch.int8)), "int8 weights need a per-row scale"),
    (dict(scale=torch.ones(4)), r"int8 weights need a per-row scale \(n,\), and only int8 weights take one"),
    (dict(x=torch.zeros(2, 7)), r"x must be a floating-point \(\.\.\., 8\) tensor"),
    (dict(bias=torch.zeros(5)), r"bias must be a floating-point \(4,\) tensor"),
    (dict(weight=torch.zeros(4, 8, dtype=torch.float16)), "weight must be a 2-D fp32, bf16 or int8"),
])
def test_bad_input_names_the_problem(args, message):
    call = dict(x=torch.zeros(2, 8), weight=torch.zeros(4, 8), bias=None, scale=None)
    call.update(args)
    with pytest.raises(ValueError, match="linear: " + message):
        linear(**call)


