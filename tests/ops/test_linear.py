"""`linear` for every weight format: the GEMV backend (each ISA path) against its reference twins,
llama.cpp's q8_0 quantizer and torch's own int8 op."""

import pytest
import torch

from mambakit.modules.linear import quantize_int8
from mambakit.ops import linear
from mambakit.ops.cpu_kernels import build_for, library
from mambakit.ops.linear import Q8_BLOCK, REGISTRY, linear_q8_ref, quantize_q8
from mambakit.ops.step_cpu import MAX_GEMV_ROWS, gemv, gemv_arithmetic
from tests.ops.isa import isa_targets

BACKENDS = sorted(REGISTRY.available("cpu"))


def weights(fmt, n, k):
    w = torch.randn(n, k)
    if fmt == "int8":
        return quantize_int8(w)
    return (w if fmt == "fp32" else w.bfloat16()), None


def dense(w, scale):
    return w.float() * (scale[:, None] if scale is not None else 1)


def gemv_twin(fmt, x, w, bias, scale, arithmetic):
    """What the GEMV kernel computes, by the reference ops: int8 -> q8_0 activations
    (linear_q8_ref); bf16 -> x rounded to bf16 first where the build has bf16 dot products."""
    if fmt == "int8":
        return linear_q8_ref(x, w, bias, scale)
    if arithmetic["bf16"] == "bf16 dot products" and fmt == "bf16":
        x = x.bfloat16().float()
    return x @ dense(w, scale).T + bias


def q8_error_bound(x, w8, scale):
    """|y_q8 - y_exact| per output (..., n): each x_i moves by at most d_b / 2 when quantized."""
    _, d = quantize_q8(x)
    k = x.shape[-1]
    half_step = (d / 2).repeat_interleave(Q8_BLOCK, -1)[..., :k]                  # (..., k)
    return half_step @ (w8.float().abs() * scale[:, None]).T


# k: below a block, 1 block + 5 (a partial block), 2 blocks, 4 blocks + 2 (a masked 64-byte load);
# m: 1, 3, 2·5 (a 3-D x), 17 (past a 16-row tile), past MAX_GEMV_ROWS (the GEMM path); n = 11, odd.
SHAPES = [(1, 19), (3, 37), (2, 5, 64), (1, 130), (17, 19), (MAX_GEMV_ROWS + 1, 19)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_format_matches_its_reference_twin(backend, fmt, shape):
    k = shape[-1]
    w, scale = weights(fmt, 11, k)
    bias = torch.randn(11)
    x = torch.randn(*shape[:-1], 2 * k)[..., ::2]                              # strided rows
    y = linear(x, w, bias, scale, backend=backend)
    exact = x @ dense(w, scale).T + bias
    gemv_rows = backend == "cpu" and x.numel() // k <= MAX_GEMV_ROWS
    if gemv_rows:
        torch.testing.assert_close(y, gemv_twin(fmt, x, w, bias, scale, gemv_arithmetic()), atol=1e-4, rtol=1e-4)
    if gemv_rows and fmt == "int8":
        assert ((y - exact).abs() <= q8_error_bound(x, w, scale) + 1e-4).all()
    else:
        tol = 5e-2 if gemv_rows and fmt == "bf16" else 1e-4                    # x rounded to bf16
        torch.testing.assert_close(y, exact, atol=tol, rtol=tol)
    xb = x.bfloat16()
    yb = linear(xb, w, None, scale, backend=backend)
    assert yb.dtype == torch.bfloat16
    if not (gemv_rows and fmt == "int8"):
        torch.testing.assert_close(yb.float(), xb.float() @ dense(w, scale).T, atol=0.1, rtol=2e-2)



@pytest.mark.parametrize("march", isa_targets())
def test_each_isa_path_of_the_gemv_matches_the_twins(march):
    """The intrinsics (AVX-512 VNNI / bf16 here) and the portable fallbacks (AVX2, plain C++) are
    all checked on this machine: the fallbacks compiled for older targets."""
    lib = library() if march == "native" else build_for(march, ("gemv.cpp",))
    arithmetic = gemv_arithmetic(lib)
    if march != "native":
        assert arithmetic == {"fp32": "fp32", "bf16": "fp32", "int8": {"x86-64-v3": "avx2", "x86-64": "scalar"}[march]}
    for fmt in ("fp32", "bf16", "int8"):
        # m: one row, a remainder, a tile of 4 and 2 more, past a 16-row chunk; k: vector tails
        for m, n, k in [(1, 7, 200), (3, 5, 37), (2, 9, 96), (6, 4, 77), (18, 3, 150)]:
            w, scale = weights(fmt, n, k)
            bias = torch.randn(n)
            x = torch.randn(m, k)
            y = gemv(lib, x, w, bias, scale, threads=2)
            torch.testing.assert_close(y, gemv_twin(fmt, x, w, bias, scale, arithmetic), atol=1e-4, rtol=1e-4)


def test_q8_activations_are_llama_cpp_q8_0():
    """Outside reference: llama.cpp's own Python q8_0 quantizer (gguf-py, bit-exact with
    ggml-quants.c): the same int8 values, and the same scales up to q8_0's fp16 rounding."""
    quants = pytest.importorskip("gguf.quants")
    x = torch.randn(3, 96) * torch.logspace(-3, 2, 96)                          # varied block ranges
    x[1, 32:64] = 0                                                            # an all-zero block
    q, d = quantize_q8(x)
    blocks = quants.quantize(x.numpy(), quants.GGMLQuantizationType.Q8_0).reshape(3, 3, 34)
    torch.testing.assert_close(q, torch.from_numpy(blocks[..., 2:].copy().view("int8")).reshape(3, 96), atol=0, rtol=0)
    d_ref = torch.from_numpy(blocks[..., :2].copy().view("float16")).float().reshape(3, 3)
    torch.testing.assert_close(d, d_ref, atol=0, rtol=2 ** -11)


def test_int8_gemv_against_torch_weight_int8pack_mm():
    """torch's own weight-only int8 kernel (the same per-row-scale format) as the outside reference:
    the spec equals it; the GEMV differs only by quantizing x (within the q8 error bound)."""
    w8, scale = quantize_int8(torch.randn(45, 96))
    x = torch.randn(3, 96)
    torch_y = torch._weight_int8pack_mm(x, w8, scale)
    torch.testing.assert_close(linear(x, w8, None, scale, backend="ref"), torch_y, atol=1e-4, rtol=1e-4)
    if "cpu" in BACKENDS:
        assert ((linear(x, w8, None, scale, backend="cpu") - torch_y).abs() <= q8_error_bound(x, w8, scale) + 1e-4).all()


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


