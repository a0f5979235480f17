"""Every fast selective-scan backend against the reference (the spec): outputs, final states and
gradients of every input on awkward shapes, gradcheck in float64, bf16, dispatch and build errors."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambakit.ops import available_backends, cpu_kernels, scan, selective_scan
from tests.conftest import tiny_mamba

# Every registered fast backend ("triton" has its own file: it runs here only under its slow
# interpreter); one unusable on this machine (no C++ compiler for "cpu") skips with the registry's reason.
AVAILABLE = available_backends("cpu")
FAST_NAMES = [name for name in sorted(AVAILABLE) if name not in ("ref", "triton")]
FAST = [pytest.param(name, marks=pytest.mark.skipif(AVAILABLE[name] is not None, reason=f"{name}: {AVAILABLE[name]}"))
        for name in FAST_NAMES]
NEEDS_CPU_KERNEL = pytest.mark.skipif(AVAILABLE["cpu"] is not None, reason=f"cpu: {AVAILABLE['cpu']}")
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make_inputs(b, d, l, n, groups=None, z=True, D=True, bias=True, h0=False, reset=False,
                softplus=True, dtype=torch.float32, seed=0):
    """Random scan inputs with Δ > 0 after bias (and softplus) and A < 0, so states stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc = (b, n, l) if groups is None else (b, groups, n, l)
    x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5 if softplus else r(b, d, l).abs() * 0.5, A=-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1,
             B=r(*bc), C=r(*bc), D=r(d) if D else None, z=r(b, d, l) if z else None,
             delta_bias=(r(d) if softplus else r(d).abs()) * 0.3 if bias else None, initial_state=r(b, d, n) if h0 else None)
    x = {k: None if v is None else v.to(dtype) for k, v in x.items()}
    x["reset"] = torch.rand(b, l, generator=g) < 0.1 if reset else None
    return x


def run(backend, x, softplus, cotangent_seed=1):
    """Scan with return_last_state; returns (out, last, {name: grad}) for a fixed random loss."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items() if k in GRAD_NAMES and v is not None}
    inputs = {**x, **leaves}
    out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(cotangent_seed)
    loss = (out.float() * torch.randn(out.shape, generator=g)).sum() + \
           (last.float() * torch.randn(last.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out.detach(), last.detach(), dict(zip(leaves, grads))


# Shapes: every L × B × N, d not a power of two; options toggled so each appears on and off.
CASES = []
for idx, (l, b, n) in enumerate(itertools.product([1, 7, 63, 257], [1, 3], [1, 16])):
    d, groups = (6, [None, 1, 2, 3][idx % 4]) if idx % 2 else (5, [None, 5][idx // 2 % 2])
    CASES.append(dict(b=b, d=d, l=l, n=n, groups=groups, z=idx % 3 != 0, D=idx % 4 != 1,
                      bias=idx % 5 != 2, h0=idx % 2 == 0, reset=idx % 3 == 1, softplus=idx % 6 != 5))
# n = 16 with whole octets of channels per B/C group: the CPU kernel's eight-channels-per-vector
# forward (csrc/selective_scan.cpp, forward_lanes); d = 24 in 2 groups (12 each) falls back.
for idx, (d, groups, l) in enumerate([(16, None, 130), (24, 3, 63), (16, 2, 1), (24, 2, 70), (8, None, 257)]):
    CASES.append(dict(b=1 + idx % 2, d=d, l=l, n=16, groups=groups, z=idx % 2 == 0, D=idx != 1, bias=idx != 3,
                      h0=idx % 2 == 1, reset=idx in (0, 3), softplus=idx != 4))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_backend_matches_reference_outputs_states_and_grads(backend, case):
    x, softplus = make_inputs(**case), case["softplus"]
    out_ref, last_ref, grads_ref = run("ref", x, softplus)
    out, last, grads = run(backend, x, softplus)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, last_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", FAST)
def test_return_last_state_false_returns_output_only(backend):
    x = make_inputs(2, 6, 9, 4, groups=3)
    out = selective_scan(**x, delta_softplus=True, backend=backend)
    torch.testing.assert_close(out, selective_scan(**x, delta_softplus=True, backend="ref"),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_bf16_within_one_bf16_rounding_of_reference(backend):
    # Both compute in fp32 from the same bf16 inputs; they differ by the final bf16 rounding.
    x = make_inputs(2, 6, 40, 16, groups=2, h0=True, dtype=torch.bfloat16)
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    out_ref, last_ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="ref")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(last, last_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("softplus", [True, False])
def test_gradcheck_float64(backend, softplus):
    x = make_inputs(2, 4, 6, 3, groups=2, h0=True, reset=True, softplus=softplus, dtype=torch.float64, seed=3)
    x["reset"][0, 3] = True  # make sure a document boundary falls inside the sequence
    names = [k for k in GRAD_NAMES if x[k] is not None]

    def f(*tensors):
        return selective_scan(**{**x, **dict(zip(names, tensors))}, delta_softplus=softplus,
                              return_last_state=True, backend=backend)

    assert torch.autograd.gradcheck(f, [x[k].clone().requires_grad_(True) for k in names])


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), dg=st.sampled_from([(1, None), (3, 1), (6, 2), (6, 6), (5, 5)]),
       l=st.integers(1, 40), n=st.sampled_from([1, 2, 5, 16]), flags=st.integers(0, 31),
       seed=st.integers(0, 2**16))
def test_property_random_shapes_match_reference(b, dg, l, n, flags, seed):
    d, groups = dg
    x = make_inputs(b, d, l, n, groups=groups, z=bool(flags & 1), D=bool(flags & 2), bias=bool(flags & 4),
                    h0=bool(flags & 8), reset=bool(flags & 16), seed=seed)
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="ref")
    for backend in (name for name in FAST_NAMES if AVAILABLE[name] is None):
        out = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
        for got, want in zip(out, ref):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@NEEDS_CPU_KERNEL
def test_backends_registered_and_auto_picks_cpu_kernel():
    backends = available_backends("cpu")   # "triton" runs on CPU only under its interpreter
    assert {k: backends[k] for k in ("ref", "parallel", "cpu")} == {"ref": None, "parallel": None, "cpu": None}
    assert set(backends) == {"ref", "parallel", "cpu", "triton"}
    assert scan.resolve_backend("auto", torch.device("cpu")).name == "cpu"
    assert available_backends("meta")["cpu"] == "runs on CPU tensors only, got meta"


def test_unknown_backend_lists_every_choice():
    with pytest.raises(ValueError, match=r"unknown selective_scan backend 'fast'.*'cpu'.*'parallel'.*'ref'"):
        selective_scan(**make_inputs(1, 2, 3, 2), backend="fast")


def test_unavailable_backend_named_explicitly_raises_with_reason():
    x = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in make_inputs(1, 2, 3, 2).items()}
    with pytest.raises(ValueError, match=r"backend 'cpu' is not available on meta: runs on CPU tensors only"):
        selective_scan(**x, backend="cpu")


def test_missing_compiler_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(scan.REGISTRY, "warned", set())
    monkeypatch.setenv("CXX", "no-such-compiler-mambakit")
    assert "not found" in available_backends("cpu")["cpu"]
    x = make_inputs(1, 3, 5, 2)
    with pytest.warns(RuntimeWarning, match="'cpu' unavailable.*not found"):
        out = selective_scan(**x, backend="auto")
    torch.testing.assert_close(out, selective_scan(**x, backend="ref"))
    with pytest.raises(ValueError, match="not available on cpu.*not found"):
        selective_scan(**x, backend="cpu")


@NEEDS_CPU_KERNEL
def test_compiled_kernels_are_cached_verified_and_rebuilt_when_corrupt(monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBAKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_state", {})
    assert cpu_kernels.available(torch.device("cpu")) is None
    assert cpu_kernels.compile_seconds() is not None       # built now ...
    [so] = tmp_path.glob("mambakit-kernels-*.so")
    assert not list(tmp_path.glob(".*.tmp"))                # ... atomically (no temp left behind)
    monkeypatch.setattr(cpu_kernels, "_state", {})          # a fresh process
    assert cpu_kernels.available(torch.device("cpu")) is None
    assert cpu_kernels.compile_seconds() is None            # ... reuses the cache
    with open(so, "r+b") as f:                              # a flipped byte, same size
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(cpu_kernels, "_state", {})
    assert cpu_kernels.available(torch.device("cpu")) is None
    assert cpu_kernels.compile_seconds() is not None       # ... and rebuilds a corrupt one


def assert_mamba_lm_same_logits_and_grads(backend, model, ids):
    """A user's view of a backend: the model's logits and every parameter gradient equal "ref"'s."""
    results = []
    for name in ("ref", backend):
        model.set_scan_backend(name)
        model.zero_grad()
        logits = model(ids)
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (logits_ref, grads_ref), (logits_fast, grads_fast) = results
    torch.testing.assert_close(logits_fast, logits_ref, atol=1e-5, rtol=1e-5)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@NEEDS_CPU_KERNEL
def test_mamba_lm_same_logits_and_grads_with_ref_and_cpu_backends():
    assert_mamba_lm_same_logits_and_grads("cpu", tiny_mamba(d_state=16), torch.randint(0, 50, (2, 13)))
