"""The Triton selective-scan kernels against the reference (the spec): outputs, final states and
every gradient on awkward shapes, mamba_ssm's own test parametrisation, gradcheck in float64.

Without a GPU the very same kernels run on CPU tensors under Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported); on a CUDA machine they are compiled and run on the GPU. The interpreter is
slow, so shapes are small and the checkpoint interval is shrunk to 8 steps so that short
sequences still cross many chunk boundaries of the recomputing backward.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from mambakit.ops import available_backends, scan, scan_triton, selective_scan, selective_scan_ref  # noqa: E402
from tests.conftest import tiny_mamba  # noqa: E402
from tests.ops.test_scan_backends import (  # noqa: E402
    CASES,
    GRAD_NAMES,
    assert_mamba_lm_same_logits_and_grads,
    make_inputs,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch):
    monkeypatch.setattr(scan_triton, "CHUNK", 8)


def run(backend, x, softplus, device="cpu"):
    """Scan on `device` with return_last_state; (out, last, {name: grad}) on CPU for a fixed loss."""
    leaves = {k: v.to(device).requires_grad_(True) for k, v in x.items() if k in GRAD_NAMES and v is not None}
    inputs = {**{k: None if v is None else v.to(device) for k, v in x.items()}, **leaves}
    out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(1)
    cot_out, cot_last = torch.randn(out.shape, generator=g), torch.randn(last.shape, generator=g)
    loss = (out.float() * cot_out.to(device)).sum() + (last.float() * cot_last.to(device)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out.detach().cpu(), last.detach().cpu(), {k: v.cpu() for k, v in zip(leaves, grads)}


# The CPU backends' cases up to L = 63, at B = 1 for L = 63 (the interpreter is slow).
SMALL = [c for c in CASES if c["l"] < 63 or (c["l"] == 63 and c["b"] == 1)]


@pytest.mark.parametrize("case", SMALL, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_triton_matches_reference_outputs_states_and_grads(case):
    x, softplus = make_inputs(**case), case["softplus"]
    out_ref, last_ref, grads_ref = run("ref", x, softplus)
    out, last, grads = run("triton", x, softplus, DEVICE)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, last_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-4, rtol=1e-4, msg=name)


# mamba_ssm's tests/ops/test_selective_scan.py, rerun on our kernel: batch 2, dim 4, dstate 8,
# u/Δ/B/C/z in the input dtype, A/D/Δ-bias in fp32 ("wtype"), Δ = 0.5·rand, A = -0.5·rand, and
# its tolerances per input dtype; its seqlens are 128..4096 (too slow for the interpreter here).
@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("varBC_groups", [1, 2])
def test_mamba_ssm_peer_test_parametrisation(itype, varBC_groups):
    rtol, atol = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}[itype]
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)   # "with z, the errors on the weights seem higher"
    g = torch.Generator().manual_seed(0)
    batch, dim, dstate, seqlen = 2, 4, 8, 20
    bc = (batch, dstate, seqlen) if varBC_groups == 1 else (batch, varBC_groups, dstate, seqlen)
    x = dict(u=torch.randn(batch, dim, seqlen, generator=g).to(itype),
             delta=(0.5 * torch.rand(batch, dim, seqlen, generator=g)).to(itype),
             A=-0.5 * torch.rand(dim, dstate, generator=g), B=torch.randn(*bc, generator=g).to(itype),
             C=torch.randn(*bc, generator=g).to(itype), D=torch.randn(dim, generator=g),
             z=torch.randn(batch, dim, seqlen, generator=g).to(itype),
             delta_bias=0.5 * torch.rand(dim, generator=g))
    out_ref, last_ref, grads_ref = run("ref", x, True)
    out, last, grads = run("triton", x, True, DEVICE)
    assert out.dtype == itype and last.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, last_ref, rtol=rtol, atol=atol)
    tolerances = dict(u=(2 * rtol, 2 * atol), delta=(5 * rtol, 10 * atol), A=(rtolw, 5 * atolw),
                      B=(rtol, atol), C=(rtol, atol), D=(rtolw, atolw), z=(rtolw, atolw),
                      delta_bias=(rtolw, atolw))
    for name, (r, a) in tolerances.items():
        assert grads[name].dtype == x[name].dtype, name
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=r, atol=a, msg=name)


def test_gradcheck_float64():
    x = make_inputs(1, 4, 11, 2, groups=2, h0=True, reset=True, dtype=torch.float64, seed=3)
    x["reset"][0, 5] = True  # a document boundary inside the sequence, chunks of 8 steps
    names = [k for k in GRAD_NAMES if x[k] is not None]
    x = {k: None if v is None else v.to(DEVICE) for k, v in x.items()}

    def f(*tensors):
        return selective_scan(**{**x, **dict(zip(names, tensors))}, delta_softplus=True,
                              return_last_state=True, backend="triton")

    # fast_mode: one random direction per input (the full Jacobian is too slow interpreted).
    assert torch.autograd.gradcheck(f, [x[k].clone().requires_grad_(True) for k in names], fast_mode=True)


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), dg=st.sampled_from([(1, None), (3, 1), (6, 2), (5, 5), (20, None)]),
       l=st.integers(1, 24), n=st.sampled_from([1, 3, 16]), flags=st.integers(0, 31), seed=st.integers(0, 2**16))
def test_property_random_shapes_match_reference(b, dg, l, n, flags, seed):
    d, groups = dg
    x = make_inputs(b, d, l, n, groups=groups, z=bool(flags & 1), D=bool(flags & 2), bias=bool(flags & 4),
                    h0=bool(flags & 8), reset=bool(flags & 16), seed=seed)
    want = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    got = selective_scan(**{k: None if v is None else v.to(DEVICE) for k, v in x.items()},
                         delta_softplus=True, return_last_state=True, backend="triton")
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-5, rtol=1e-5)


def test_return_last_state_false_and_no_grad_skip_checkpoints():
    x = {k: None if v is None else v.to(DEVICE) for k, v in make_inputs(2, 6, 9, 4, groups=3).items()}
    out = selective_scan(**x, delta_softplus=True, backend="triton")
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.cpu(), selective_scan_ref(**{k: None if v is None else v.cpu()
                                                                for k, v in x.items()}, delta_softplus=True))


def test_mamba_lm_same_logits_and_grads_with_ref_and_triton_backends():
    assert_mamba_lm_same_logits_and_grads("triton", tiny_mamba(d_model=16, d_state=4).to(DEVICE),
                                          torch.randint(0, 50, (2, 11), device=DEVICE))


def test_auto_prefers_triton_on_cuda_and_never_on_cpu():
    assert scan.REGISTRY.auto_order["cuda"][0] == "triton"
    assert "triton" not in scan.REGISTRY.auto_order["cpu"]


def test_unavailable_reasons_name_the_missing_piece(monkeypatch):
    assert "runs on CUDA tensors" in available_backends("meta")["triton"]
    monkeypatch.setattr(scan_triton, "interpreting", lambda: False)
    assert "TRITON_INTERPRET=1" in available_backends("cpu")["triton"]
    with pytest.raises(ValueError, match="backend 'triton' is not available on cpu: runs on CUDA"):
        selective_scan(**make_inputs(1, 2, 3, 2), backend="triton")
    monkeypatch.setattr(scan_triton, "_triton_error", lambda: "triton is not installed (pip install 'mambakit[gpu]')")
    assert "pip install 'mambakit[gpu]'" in available_backends("cuda")["triton"]
