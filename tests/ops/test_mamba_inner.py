"""ops.mamba_inner (conv + SiLU + scan + gate + out_proj fused, hand-written backward) against its
twin mamba_inner_ref (the mixer and LM that use it: tests/models/test_mamba_lm.py)."""

import pytest
import torch

from mambakit.ops.conv import causal_conv1d
from mambakit.ops.cpu_kernels import available, build_for, library
from mambakit.ops.mamba_inner import (
    conv1d_silu,
    conv1d_silu_backward,
    gate_ref,
    gate_silu,
    mamba_inner,
    mamba_inner_continue,
    mamba_inner_ref,
)
from mambakit.ops.scan import selective_scan_ref
from tests.ops.isa import isa_targets

pytestmark = pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ compiler")


def make_inputs(b, l, d, n, r, k, d_model, conv_bias=True, out_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).requires_grad_()

    A_log = (torch.rand(d, n, generator=g) * 2 + 0.1).log().requires_grad_()
    return [t(b, l, 2 * d), t(d, k), t(d) if conv_bias else None, t(r + 2 * n, d), t(d, r), t(d), A_log, t(d),
            t(d_model, d), t(d_model) if out_bias else None]


CASES = [  # b, l, d, n, r, k, d_model, conv_bias, out_bias: odd lengths, the kernel's n = 16 and others,
    (1, 37, 20, 5, 3, 4, 7, True, True),           # l shorter than a scan chunk, d not a multiple of 16
    (3, 130, 33, 16, 4, 3, 12, True, True),         # several chunks, batch > 1
    (2, 1, 17, 16, 2, 2, 5, True, False),           # one step
    (2, 200, 40, 7, 3, 5, 9, False, False),         # no biases, d_conv 5
    (1, 3, 16, 4, 1, 4, 8, True, True),             # l < d_conv
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_outputs_and_every_gradient(case):
    *shape, conv_bias, out_bias = case
    args = make_inputs(*shape, conv_bias=conv_bias, out_bias=out_bias)
    out, ref = mamba_inner(*args), mamba_inner_ref(*args)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    leaves = [a for a in args if a is not None]
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item() + 1e-6, rtol=1e-4)


def final_states_ref(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D):
    """The conv state (the last k - 1 inputs of the conv, zeros before the sequence) and the SSM
    state after xz, from the unfused reference chain (as mamba_inner_ref computes it)."""
    d, k, r, n = conv_weight.shape[0], conv_weight.shape[1], dt_proj_weight.shape[1], A_log.shape[1]
    x = xz[..., :d].transpose(1, 2)                                              # (b, d, l)
    conv_state = torch.nn.functional.pad(x, (k - 1, 0))[..., x.shape[-1]:]      # (b, d, k - 1)
    u = torch.nn.functional.silu(causal_conv1d(x, conv_weight, conv_bias)[0])
    dt, B, C = torch.nn.functional.linear(u.transpose(1, 2), x_proj_weight).split([r, n, n], dim=-1)
    delta = torch.nn.functional.linear(dt, dt_proj_weight).transpose(1, 2)
    _, last = selective_scan_ref(u, delta, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D,
                                 delta_bias=dt_bias, delta_softplus=True, return_last_state=True)
    return conv_state, last


@pytest.mark.parametrize("case, cuts", [
    ((2, 70, 24, 16, 3, 4, 8, True, True), [1, 3, 40]),      # eight-channel scan lanes; chunks shorter than k - 1
    ((1, 37, 20, 5, 3, 4, 7, True, False), [20]),            # generic n, d not a multiple of 8
    ((3, 9, 16, 16, 2, 1, 5, False, True), [4, 5]),          # d_conv 1: an empty conv state
])
def test_continue_in_chunks_matches_the_whole_sequence_and_its_final_states(case, cuts):
    """Prefill in chunks (generation): each chunk continues from the states the last one left;
    outputs equal the whole sequence's through the reference, final states the reference's."""
    *shape, conv_bias, out_bias = case
    args = [None if a is None else a.detach() for a in make_inputs(*shape, conv_bias=conv_bias, out_bias=out_bias)]
    xz, conv_weight = args[0], args[1]
    b, l, d, k, n = xz.shape[0], xz.shape[1], conv_weight.shape[0], conv_weight.shape[1], args[6].shape[1]
    conv_state, ssm_state = torch.zeros(b, d, k - 1), torch.zeros(b, d, n)
    outs = []
    with torch.inference_mode():
        for start, end in zip([0, *cuts], [*cuts, l]):
            out, conv_state, ssm_state = mamba_inner_continue(xz[:, start:end].contiguous(), *args[1:],
                                                              conv_state, ssm_state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), mamba_inner_ref(*args), atol=2e-5, rtol=1e-4)
    want_conv, want_ssm = final_states_ref(*args[:8])
    torch.testing.assert_close(conv_state, want_conv)
    torch.testing.assert_close(ssm_state, want_ssm, atol=2e-5, rtol=1e-4)


def test_continue_is_inference_only_and_checks_its_states():
    args = make_inputs(1, 5, 16, 16, 2, 4, 8)
    states = torch.zeros(1, 16, 3), torch.zeros(1, 16, 16)
    with pytest.raises(ValueError, match="inference-only"):
        mamba_inner_continue(*args, *states)
    with torch.no_grad(), pytest.raises(ValueError, match=r"ssm_state must be .*\(1, 16, 16\)"):
        mamba_inner_continue(*args, states[0], torch.zeros(1, 16, 15))


def test_inference_forward_matches_reference():
    """Without autograd the op skips the scan's checkpoints and saves nothing: same output."""
    args = make_inputs(2, 150, 24, 16, 2, 4, 8)
    with torch.inference_mode():
        torch.testing.assert_close(mamba_inner(*args), mamba_inner_ref(*args), atol=2e-5, rtol=1e-4)



@pytest.mark.parametrize("march", isa_targets())
def test_conv_kernel_matches_torch_on_each_isa(march):
    """The conv + SiLU kernel compiled for this CPU, for AVX2 only and for plain x86-64: forward
    and the three gradients against F.conv1d + F.silu under autograd."""
    lib = library() if march == "native" else build_for(march, ("causal_conv1d.cpp",))
    for b, l, d, k, bias in [(2, 19, 21, 4, True), (1, 3, 16, 4, False), (3, 64, 33, 2, True), (1, 7, 5, 8, True)]:
        xz = torch.randn(b, l, 2 * d)
        w, bb = torch.randn(d, k), torch.randn(d) if bias else None
        x = xz[..., :d].transpose(1, 2).clone().requires_grad_()
        w_ = w.clone().requires_grad_()
        b_ = None if bb is None else bb.clone().requires_grad_()
        want = torch.nn.functional.silu(causal_conv1d(x, w_, b_)[0])
        torch.testing.assert_close(conv1d_silu(xz, w, bb, lib), want, atol=1e-5, rtol=1e-5)
        du = torch.randn(b, d, l)
        grads = torch.autograd.grad(want, [t for t in (x, w_, b_) if t is not None], du)
        dxz = torch.full_like(xz, float("nan"))
        dw, db = conv1d_silu_backward(xz, w, bb, du, dxz, lib)
        torch.testing.assert_close(dxz[..., :d].transpose(1, 2), grads[0], atol=1e-4, rtol=1e-4)
        assert torch.isnan(dxz[..., d:]).all()                                  # z's half is left alone
        torch.testing.assert_close(dw, grads[1], atol=1e-4, rtol=1e-4)
        if bias:
            torch.testing.assert_close(db, grads[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (lambda a: a.__setitem__(0, a[0].double()), "xz must be a contiguous fp32"),
    (lambda a: a.__setitem__(0, a[0][:, :, :-1]), "contiguous|xz must be"),
    (lambda a: a.__setitem__(1, torch.randn(20, 9)), "d_conv"),
    (lambda a: a.__setitem__(3, torch.randn(12, 20)), "x_proj_weight"),
    (lambda a: a.__setitem__(6, torch.randn(19, 5)), "A_log"),
    (lambda a: a.__setitem__(9, torch.randn(3)), "out_bias"),
])
def test_bad_inputs_are_named_before_the_kernel_runs(bad, match):
    args = [None if a is None else a.detach() for a in make_inputs(1, 10, 20, 5, 3, 4, 7)]
    bad(args)
    with pytest.raises(ValueError, match=match):
        mamba_inner(*args)


@pytest.mark.parametrize("march", isa_targets())
def test_gate_kernel_matches_its_twin_on_each_isa(march):
    """y = v · SiLU(z) transposed from (b, d, l) to (b, l, d) in tiles of 16 × 16: shapes with
    partial tiles in both directions, one step, one channel."""
    lib = library() if march == "native" else build_for(march, ("causal_conv1d.cpp",))
    for b, l, d in [(2, 37, 21), (1, 16, 16), (3, 1, 5), (1, 50, 1), (2, 33, 48)]:
        xz, v = torch.randn(b, l, 2 * d) * 4, torch.randn(b, d, l)
        torch.testing.assert_close(gate_silu(xz, v, lib), gate_ref(xz, v), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"gate_silu: needs xz \(b, l, 2d\) and v \(b, d, l\)"):
        gate_silu(torch.randn(1, 4, 6), torch.randn(1, 4, 3))
