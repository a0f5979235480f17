"""The Mamba-2 mixer's fused stages (csrc/causal_conv1d.cpp and csrc/mamba2_rows.cpp via
ops/mamba2_cpu.py) against their PyTorch twins, outputs and gradients: conv + SiLU over in_proj's
rows (in place, with and without a carried state, short sequences), the gated grouped RMSNorm
(both gate orders, strided z); the AVX2-only and scalar builds; other dtypes and a state that needs
a gradient taking the twin; shapes refused before the kernel."""

import pytest
import torch

from mambakit.ops.cpu_kernels import available, build_for, library, ptr
from mambakit.ops.mamba2_cpu import conv_silu_rows, conv_silu_rows_ref, rms_norm_gated, rms_norm_gated_ref
from tests.ops.isa import isa_targets

pytestmark = pytest.mark.skipif(available(torch.device("cpu")) is not None,
                                reason=f"compiled kernels unavailable: {available(torch.device('cpu'))}")


def in_proj_rows(b, l, d, extra=7, seed=0):
    """A (b, l, d) column slice of a wider matmul-like output: rows at stride d + extra."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, l, d + extra, generator=gen)[..., 3:3 + d]


@pytest.mark.parametrize("b, l, d, k", [(1, 1, 5, 4), (2, 2, 9, 4), (1, 37, 33, 4), (2, 19, 16, 2), (1, 8, 7, 5)])
@pytest.mark.parametrize("with_state, with_bias", [(False, True), (True, True), (True, False)])
def test_conv_silu_rows_matches_its_twin(b, l, d, k, with_state, with_bias):
    x = in_proj_rows(b, l, d)
    w, bias = torch.randn(d, k), torch.randn(d) if with_bias else None
    state = torch.randn(b, d, k - 1) if with_state else None
    y_ref, s_ref = conv_silu_rows_ref(x, w, bias, state)
    with torch.no_grad():
        y, s = conv_silu_rows(x, w, bias, state)
    assert y.is_contiguous()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref)                                     # the raw inputs: exact


@pytest.mark.parametrize("shape, group", [((1, 5, 12), 12), ((2, 3, 12), 4), ((7, 64), 16), ((2, 2, 3, 10), 5)])
@pytest.mark.parametrize("gate", ["after", "before", None])
def test_rms_norm_gated_matches_its_twin(shape, group, gate):
    d = shape[-1]
    y = torch.randn(shape)
    z = None if gate is None else torch.randn(*shape[:-1], d + 5)[..., 2:2 + d]   # strided, as in_proj's z
    w = torch.randn(d)
    want = rms_norm_gated_ref(y, z, w, 1e-5, group, norm_before_gate=gate == "before")
    with torch.no_grad():
        got = rms_norm_gated(y, z, w, 1e-5, group, norm_before_gate=gate == "before")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("b, l, d, k", [(1, 1, 5, 4), (2, 2, 9, 4), (1, 37, 33, 4), (2, 19, 16, 2), (1, 8, 7, 5)])
@pytest.mark.parametrize("with_state, with_bias", [(False, True), (True, True), (True, False)])
def test_conv_silu_rows_gradients_match_its_twin(b, l, d, k, with_state, with_bias):
    """The hand-written backward (dx into a fresh (b, l, d), dw, dbias) against autograd through
    the twin, x a strided column slice as in the mixer, the state carried but not differentiated."""
    base = torch.randn(b, l, d + 7)
    w, bias = torch.randn(d, k), torch.randn(d) if with_bias else None
    state = torch.randn(b, d, k - 1) if with_state else None
    dy = torch.randn(b, l, d)
    grads = []
    for fn in (conv_silu_rows, conv_silu_rows_ref):
        leaves = [t.clone().requires_grad_() for t in (base, w) + ((bias,) if with_bias else ())]
        x = leaves[0][..., 3:3 + d]
        y, s = fn(x, leaves[1], leaves[2] if with_bias else None, state)
        (y * dy).sum().backward()
        grads.append([y.detach(), s] + [t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape, group", [((1, 5, 12), 12), ((2, 3, 12), 4), ((7, 64), 16), ((2, 2, 3, 10), 5)])
@pytest.mark.parametrize("gate", ["after", "before", None])
def test_rms_norm_gated_gradients_match_its_twin(shape, group, gate):
    d = shape[-1]
    y0, w0, dout = torch.randn(shape), torch.randn(d), torch.randn(shape)
    z0 = None if gate is None else torch.randn(*shape[:-1], d + 5)
    grads = []
    for fn in (rms_norm_gated, rms_norm_gated_ref):
        y, w = y0.clone().requires_grad_(), w0.clone().requires_grad_()
        zl = None if z0 is None else z0.clone().requires_grad_()
        z = None if zl is None else zl[..., 2:2 + d]                               # strided, as in_proj's z
        out = fn(y, z, w, 1e-5, group, norm_before_gate=gate == "before")
        (out * dout).sum().backward()
        grads.append([out.detach(), y.grad, w.grad] + ([] if zl is None else [zl.grad]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_other_dtypes_and_a_differentiated_state_take_the_twin():
    x, w = in_proj_rows(1, 6, 8), torch.randn(8, 4)
    state = torch.randn(1, 8, 3, requires_grad=True)
    y, _ = conv_silu_rows(x, w, None, state)
    y.sum().backward()
    assert state.grad is not None                                            # only the twin gives one
    y16, z16 = torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    out = rms_norm_gated(y16, z16, torch.ones(8), 1e-5, 8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, rms_norm_gated_ref(y16, z16, torch.ones(8), 1e-5, 8))


@pytest.mark.parametrize("march", isa_targets())
def test_each_isa_build_matches_the_twins(march):
    lib = library() if march == "native" else build_for(march, ("mamba2_rows.cpp", "causal_conv1d.cpp"))
    b, l, d, k = 2, 11, 19, 4
    x, w, bias, state = torch.randn(b, l, d), torch.randn(d, k), torch.randn(d), torch.randn(b, d, k - 1)
    y, s, scratch = torch.empty(b, l, d), torch.empty(b, d, k - 1), torch.empty(2, 2 * 16 * (l + k - 1))
    lib.mk_conv1d_silu_fwd_f32(ptr(x), l * d, d, ptr(state), ptr(w), ptr(bias), ptr(y), l * d, 1, d, ptr(s),
                               ptr(scratch), b, d, l, k, 2)
    y_ref, s_ref = conv_silu_rows_ref(x, w, bias, state)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref)
    yy, z, nw, dout = torch.randn(5, 12), torch.randn(5, 12), torch.randn(12), torch.randn(5, 12)
    dy, dz, dw = torch.empty(5, 12), torch.empty(5, 12), torch.zeros(2, 12)
    lib.mk_rmsnorm_gated_bwd_f32(ptr(yy), 12, ptr(z), 12, ptr(nw), ptr(dout), ptr(dy), ptr(dz), ptr(dw),
                                 5, 12, 4, 1e-5, 0, 2)
    leaves = [t.clone().requires_grad_() for t in (yy, z, nw)]
    (rms_norm_gated_ref(*leaves, 1e-5, 4) * dout).sum().backward()
    for got, leaf in zip((dy, dz, dw.sum(0)), leaves):
        torch.testing.assert_close(got, leaf.grad, atol=1e-4, rtol=1e-4)
    yy, z, nw, out = torch.randn(5, 12), torch.randn(5, 12), torch.randn(12), torch.empty(5, 12)
    lib.mk_rmsnorm_gated_f32(ptr(yy), 12, ptr(z), 12, ptr(nw), ptr(out), 5, 12, 4, 1e-5, 0, 2)
    torch.testing.assert_close(out, rms_norm_gated_ref(yy, z, nw, 1e-5, 4), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: conv_silu_rows(torch.randn(1, 4, 6), torch.randn(5, 4)), "weight"),
    (lambda: conv_silu_rows(torch.randn(1, 4, 6), torch.randn(6, 4), torch.randn(5)), "bias"),
    (lambda: conv_silu_rows(torch.randn(1, 4, 6), torch.randn(6, 4), None, torch.randn(1, 6, 2)), "state"),
    (lambda: rms_norm_gated(torch.randn(2, 6), torch.randn(2, 5), torch.ones(6), 1e-5, 6), "z must"),
    (lambda: rms_norm_gated(torch.randn(2, 6), None, torch.ones(6), 1e-5, 4), "group_size"),
])
def test_bad_shapes_are_refused_before_the_kernel(call, message):
    with pytest.raises(ValueError, match=message):
        with torch.no_grad():
            call()
