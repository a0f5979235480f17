"""SSD (Mamba-2): the four forms agree — sequential reference, quadratic dual form, chunked SSD and
the one-token step — on outputs, final states and every gradient, on awkward shapes; carried
states across split sequences, resets for packed documents; and transformers' own Mamba-2
reference functions (mamba2_chunk_scan / mamba2_selective_state_update) as the outside reference."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambakit.ops import available_ssd_backends, ssd_scan, ssd_step
from mambakit.ops.cpu_kernels import available
from mambakit.ops.ssd import REGISTRY

# "cpu" (the fused C++ forward, when the kernels build) runs at its own chunk size here;
# tests/ops/test_ssd_cpu.py sweeps small chunks through it.
FORMS = ["quadratic", "chunked"] + (["cpu"] if available(torch.device("cpu")) is None else [])
GRAD_NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def make_inputs(b, l, h, p, g, n, D="h", z=True, bias=True, h0=False, reset=False, softplus=True,
                dtype=torch.float32, seed=0):
    """Random SSD inputs with Δ > 0 (after bias and softplus) and A < 0, so states stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    x = dict(x=r(b, l, h, p), dt=r(b, l, h) * 0.5 if softplus else r(b, l, h).abs() * 0.3,
             A=-torch.rand(h, generator=gen, dtype=torch.float64) * 2 - 0.1,
             B=r(b, l, g, n), C=r(b, l, g, n),
             D={"h": r(h), "hp": r(h, p), None: None}[D], z=r(b, l, h, p) if z else None,
             dt_bias=(r(h) if softplus else r(h).abs()) * 0.3 if bias else None,
             initial_states=r(b, h, p, n) if h0 else None)
    x = {k: None if v is None else v.to(dtype) for k, v in x.items()}
    x["reset"] = torch.rand(b, l, generator=gen) < 0.15 if reset else None
    return x


def run(backend, x, chunk_size=8, softplus=True, seed=1, **kw):
    """SSD with final states; returns (y, final, {name: grad}) for a fixed random loss."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items() if k in GRAD_NAMES and v is not None}
    y, final = ssd_scan(**{**x, **leaves}, chunk_size=chunk_size, dt_softplus=softplus,
                        return_final_states=True, backend=backend, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (y.float() * torch.randn(y.shape, generator=gen)).sum() + \
           (final.float() * torch.randn(final.shape, generator=gen)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y.detach(), final.detach(), dict(zip(leaves, grads))


# L not a multiple of the chunk (and shorter than it), B=1 and B>1, odd head counts, g>1,
# options toggled so each appears on and off.
CASES = []
for idx, (l, b, (h, g)) in enumerate(itertools.product([1, 5, 19, 40], [1, 2], [(3, 1), (6, 3), (5, 5)])):
    CASES.append(dict(b=b, l=l, h=h, p=[3, 4][idx % 2], g=g, n=[1, 5][idx // 2 % 2],
                      D=["h", "hp", None][idx % 3], z=idx % 4 != 1, bias=idx % 5 != 2,
                      h0=idx % 2 == 0, reset=idx % 3 == 1, softplus=idx % 6 != 5))


@pytest.mark.parametrize("backend", FORMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_forms_match_reference_outputs_states_and_grads(backend, case):
    x, softplus = make_inputs(**case), case["softplus"]
    y_ref, final_ref, grads_ref = run("ref", x, softplus=softplus)
    y, final, grads = run(backend, x, softplus=softplus)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunk_size_changes_nothing_but_speed(chunk_size):
    x = make_inputs(2, 29, 4, 3, 2, 6, h0=True, reset=True)
    want = ssd_scan(**x, chunk_size=4, dt_softplus=True, return_final_states=True, backend="ref")
    got = ssd_scan(**x, chunk_size=chunk_size, dt_softplus=True, return_final_states=True, backend="chunked")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 6, 2, 2, 1, 2), (2, 7, 4, 2, 2, 3)])
def test_gradcheck_float64_chunked_and_quadratic(shape):
    """Finite differences: the chunked form's hand-written backward (3 chunks, the last padded,
    2 heads per group, packed documents, a carried state) and the quadratic form's autograd."""
    x = make_inputs(*shape, D="hp", h0=True, reset=True, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if x[k] is not None]
    for backend in FORMS:
        def f(*leaves, backend=backend):
            out = ssd_scan(**{**x, **dict(zip(names, leaves))}, chunk_size=3, dt_softplus=True,
                           return_final_states=True, backend=backend)
            return out
        assert torch.autograd.gradcheck(f, [x[k].clone().requires_grad_(True) for k in names])


def test_chunked_training_keeps_no_chunk_by_chunk_blocks():
    """What the chunked form keeps for its backward is O(l) (inputs and chunk states), not the
    O(l·Q) decay blocks autograd would keep: here one (h, l, Q) block alone is twice the bound."""
    b, l, h, p, g, n, Q = 1, 256, 4, 4, 1, 4, 64
    x = make_inputs(b, l, h, p, g, n, h0=True, reset=True)
    leaves = {k: x[k].clone().requires_grad_(True) for k in ("x", "dt", "B", "C", "z", "initial_states")}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y, final = ssd_scan(**{**x, **leaves}, chunk_size=Q, dt_softplus=True, return_final_states=True,
                            backend="chunked")
    bound = 8 * b * l * h * p
    assert sum(saved) < bound < b * h * l * Q, saved
    (y.sum() + final.sum()).backward()
    assert all(t.grad is not None and t.grad.isfinite().all() for t in leaves.values())


@pytest.mark.parametrize("backend", ["ref", *FORMS])
def test_initial_states_carry_across_split_sequences(backend):
    """Scanning [0, 13) then [13, 31) from the carried state == scanning [0, 31) at once."""
    x = make_inputs(2, 31, 4, 3, 2, 5, h0=True, reset=True)
    y, final = ssd_scan(**x, chunk_size=8, dt_softplus=True, return_final_states=True, backend=backend)
    part = lambda sl: {k: v[:, sl] if k in ("x", "dt", "B", "C", "z", "reset") else v for k, v in x.items()}
    y1, h1 = ssd_scan(**part(slice(0, 13)), chunk_size=8, dt_softplus=True, return_final_states=True,
                      backend=backend)
    y2, h2 = ssd_scan(**{**part(slice(13, 31)), "initial_states": h1}, chunk_size=8, dt_softplus=True,
                      return_final_states=True, backend=backend)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2, final, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["ref", *FORMS])
def test_reset_isolates_packed_documents(backend):
    """Two documents packed in one row with reset at the boundary == each scanned alone."""
    x = make_inputs(1, 23, 3, 2, 1, 4, h0=True)
    cut = 9
    reset = torch.zeros(1, 23, dtype=torch.bool)
    reset[0, cut] = True
    packed, final = ssd_scan(**{**x, "reset": reset}, chunk_size=4, dt_softplus=True,
                             return_final_states=True, backend=backend)
    doc = lambda sl: {k: v[:, sl] if k in ("x", "dt", "B", "C", "z") else v for k, v in x.items()}
    first = ssd_scan(**doc(slice(0, cut)), chunk_size=4, dt_softplus=True, backend=backend)
    second, final2 = ssd_scan(**{**doc(slice(cut, 23)), "initial_states": None}, chunk_size=4,
                              dt_softplus=True, return_final_states=True, backend=backend)
    torch.testing.assert_close(packed, torch.cat([first, second], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final2, atol=1e-5, rtol=1e-5)


def test_step_by_step_decoding_equals_the_scan():
    x = make_inputs(2, 9, 6, 3, 2, 4, D="hp", h0=True)
    y, final = ssd_scan(**x, chunk_size=4, dt_softplus=True, return_final_states=True, backend="chunked")
    state, ys = x["initial_states"], []
    for t in range(9):
        out, state = ssd_step(state, x["x"][:, t], x["dt"][:, t], x["A"], x["B"][:, t], x["C"][:, t],
                              D=x["D"], z=x["z"][:, t], dt_bias=x["dt_bias"], dt_softplus=True)
        ys.append(out)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, final, atol=1e-5, rtol=1e-5)


def test_dt_limit_clamps_the_step():
    x = make_inputs(1, 12, 2, 2, 1, 3)
    want = ssd_scan(**x, dt_softplus=True, dt_limit=(0.2, 0.5), backend="ref")
    for backend in FORMS:
        torch.testing.assert_close(ssd_scan(**x, chunk_size=5, dt_softplus=True, dt_limit=(0.2, 0.5),
                                            backend=backend), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ssd_scan(**x, dt_softplus=True, backend="ref"), want)


def test_bf16_inputs_give_bf16_outputs_close_to_fp32():
    x = make_inputs(1, 33, 4, 8, 2, 8, h0=True)
    want = ssd_scan(**x, chunk_size=16, dt_softplus=True, backend="ref")
    low = {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in x.items()}
    y, final = ssd_scan(**low, chunk_size=16, dt_softplus=True, return_final_states=True, backend="chunked")
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    torch.testing.assert_close(y.float(), want, atol=0.1, rtol=0.05)


# -- outside reference: transformers' Mamba-2 PyTorch functions (mamba_ssm's signatures) --------
@pytest.mark.parametrize("backend", ["ref", *FORMS])
def test_matches_transformers_mamba2_chunk_scan(backend):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    x = make_inputs(2, 45, 6, 4, 3, 5, z=False, h0=True)
    want_y, want_final = mamba2_chunk_scan(
        x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=16, D=x["D"], dt_bias=x["dt_bias"],
        initial_states=x["initial_states"], dt_softplus=True, dt_limit=(0.0, math.inf),
        return_final_states=True)
    y, final = ssd_scan(**x, chunk_size=16, dt_softplus=True, return_final_states=True, backend=backend)
    torch.testing.assert_close(y, want_y, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(final, want_final, atol=2e-5, rtol=1e-5)


def test_step_matches_transformers_selective_state_update():
    from transformers.models.mamba2.modeling_mamba2 import mamba2_selective_state_update

    b, h, p, g, n = 2, 6, 4, 3, 5
    x = make_inputs(b, 1, h, p, g, n, D="h", h0=True)
    state = x["initial_states"]
    # transformers takes Δ, A, D and dt_bias tied across the head dimension, expanded (mamba_ssm's layout)
    want = state.clone()
    want_y = mamba2_selective_state_update(
        want, x["x"][:, 0], x["dt"][:, 0, :, None].expand(-1, -1, p), x["A"][:, None, None].expand(-1, p, n),
        x["B"][:, 0], x["C"][:, 0], x["D"][:, None].expand(-1, p), z=x["z"][:, 0],
        dt_bias=x["dt_bias"][:, None].expand(-1, p), dt_softplus=True)
    y, new = ssd_step(state, x["x"][:, 0], x["dt"][:, 0], x["A"], x["B"][:, 0], x["C"][:, 0], D=x["D"],
                      z=x["z"][:, 0], dt_bias=x["dt_bias"], dt_softplus=True)
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, want, atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), l=st.integers(1, 40), hg=st.sampled_from([(1, 1), (3, 1), (4, 2), (6, 3)]),
       p=st.integers(1, 5), n=st.integers(1, 6), chunk=st.integers(1, 17), flags=st.integers(0, 15),
       seed=st.integers(0, 99))
def test_property_random_shapes_match_reference(b, l, hg, p, n, chunk, flags, seed):
    h, g = hg
    x = make_inputs(b, l, h, p, g, n, z=bool(flags & 1), bias=bool(flags & 2), h0=bool(flags & 4),
                    reset=bool(flags & 8), seed=seed)
    ref = ssd_scan(**x, chunk_size=chunk, dt_softplus=True, return_final_states=True, backend="ref")
    for backend in FORMS:
        got = ssd_scan(**x, chunk_size=chunk, dt_softplus=True, return_final_states=True, backend=backend)
        for a, want in zip(got, ref):
            torch.testing.assert_close(a, want, atol=1e-5, rtol=1e-5)


# -- dispatch and bad input -----------------------------------------------------------------------
def test_backends_registered_and_auto_picks_the_fused_cpu_form():
    avail = available_ssd_backends("cpu")
    assert {k: avail[k] for k in ("ref", "quadratic", "chunked")} == {"ref": None, "quadratic": None, "chunked": None}
    # "cpu" needs the compiled kernels; without them "auto" falls back to the chunked torch form
    want = "cpu" if avail["cpu"] is None else "chunked"
    assert REGISTRY.resolve("auto", torch.device("cpu")).name == want


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match=r"unknown ssd_scan backend 'fast'.*'chunked'.*'quadratic'.*'ref'"):
        ssd_scan(**make_inputs(1, 3, 2, 2, 1, 2), backend="fast")


@pytest.mark.parametrize("change, message", [
    (dict(x=torch.zeros(1, 3, 2)), r"x must be a \(batch, seqlen, nheads, headdim\) tensor, got \(1, 3, 2\)"),
    (dict(dt=torch.zeros(1, 3, 3)), r"dt must have shape \(1, 3, 2\), got \(1, 3, 3\)"),
    (dict(A=torch.zeros(2, 1)), r"A must have shape \(2\), got \(2, 1\)"),
    (dict(B=torch.zeros(1, 3, 3, 2), C=torch.zeros(1, 3, 3, 2)), r"B/C have 3 groups, which must divide nheads=2"),
    (dict(C=torch.zeros(1, 3, 1, 4)), r"C must have shape \(1, 3, \*, 2\), got \(1, 3, 1, 4\)"),
    (dict(D=torch.zeros(3)), r"D must have shape \(2\), got \(3,\)"),
    (dict(initial_states=torch.zeros(1, 2, 2, 3)), r"initial_states must have shape \(1, 2, 2, 2\)"),
    (dict(dt=torch.zeros(1, 3, 2, dtype=torch.int64)), r"dt must be a real floating-point tensor"),
    (dict(reset=torch.zeros(1, 4, dtype=torch.bool)), r"reset must be a \(batch=1, seqlen=3\) bool tensor"),
    (dict(chunk_size=0), r"chunk_size must be a positive int, got 0"),
    (dict(x=torch.zeros(1, 0, 2, 2)), r"x has seqlen 0"),
])
def test_bad_inputs_name_the_problem(change, message):
    x = {**make_inputs(1, 3, 2, 2, 1, 2), **change}
    with pytest.raises(ValueError, match="ssd_scan: " + message):
        ssd_scan(**x)


def test_step_bad_state_shape_is_named():
    x = make_inputs(1, 1, 2, 2, 1, 2)
    with pytest.raises(ValueError, match=r"ssd_step: state must have shape \(1, 2, 2, 2\), got \(1, 2, 2\)"):
        ssd_step(torch.zeros(1, 2, 2), x["x"][:, 0], x["dt"][:, 0], x["A"], x["B"][:, 0], x["C"][:, 0])
