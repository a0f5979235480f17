"""SSD's "cpu" backend (csrc/ssd_chunk.cpp: the chunked forward and its backward fused per
(batch, head)) against their twins: the sequential reference (the spec) and ChunkScan's PyTorch
forward and backward — outputs, final states, the chunk states the backward reads, and gradients,
on awkward shapes (L not a multiple of the chunk, ngroups > 1, odd head counts, initial states,
resets); plus the AVX2-only and scalar builds of the kernels, and shape checks before the call."""

import pytest
import torch

from mambakit.ops import ssd_scan
from mambakit.ops.cpu_kernels import available, build_for, library
from mambakit.ops.ssd import REGISTRY
from mambakit.ops.ssd_chunk_scan import ChunkScan, chunk_scan_bwd_cpu, chunk_scan_bwd_ref, chunk_scan_fwd_cpu
from mambakit.ops.ssd_cpu import CPU_CHUNK_SIZE, ssd_scan_cpu
from tests.ops.isa import isa_targets
from tests.ops.test_ssd import CASES, GRAD_NAMES, make_inputs

pytestmark = pytest.mark.skipif(available(torch.device("cpu")) is not None,
                                reason=f"compiled kernels unavailable: {available(torch.device('cpu'))}")


def run(fn, x, grad, seed=1, **kw):
    """(y, final, {name: grad}) of fn's SSD for a fixed random loss; grad=False runs it under no_grad."""
    leaves = {k: v.clone().requires_grad_(grad) for k, v in x.items() if k in GRAD_NAMES and v is not None}
    with torch.set_grad_enabled(grad):
        y, final = fn(**{**x, **leaves}, return_final_states=True, **kw)
    if not grad:
        return y, final, {}
    gen = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=gen)).sum() + (final * torch.randn(final.shape, generator=gen)).sum()
    return y.detach(), final.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("chunk", [3, 8])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_fused_matches_reference_outputs_states_and_grads(case, chunk):
    x, softplus = make_inputs(**case), case["softplus"]
    y_ref, final_ref, grads_ref = run(ssd_scan, x, True, backend="ref", dt_softplus=softplus)
    for grad in (False, True):  # the inference path (no padding, no chunk states) and training's
        y, final, grads = run(ssd_scan_cpu, x, grad, chunk_size=chunk, dt_softplus=softplus)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-4, rtol=1e-4, msg=name)


def chunk_inputs(b, l, h, p, g, n, Q, h0=True, reset=True, seed=0):
    """ChunkScan's inputs (Δx, log Ā, B, C, h0, seg), padded to whole chunks as ssd_scan_chunked does."""
    gen = torch.Generator().manual_seed(seed)
    c = -(-l // Q)
    dt = torch.rand(b, c * Q, h, generator=gen) * 0.5
    dt[:, l:] = 0
    xdt = torch.randn(b, c * Q, h, p, generator=gen) * dt[..., None]
    a = -dt * (torch.rand(h, generator=gen) * 2 + 0.1)
    B, C = (torch.randn(b, c * Q, g, n, generator=gen) for _ in range(2))
    h0 = torch.randn(b, h, p, n, generator=gen) if h0 else None
    seg = None
    if reset:
        r = torch.rand(b, c * Q, generator=gen) < 0.15
        r[:, l:] = False
        seg = r.long().view(b, c, Q).cumsum(-1)
    return xdt, a, B, C, h0, seg


@pytest.mark.parametrize("shape", [(1, 37, 3, 5, 1, 4, 8), (2, 40, 6, 4, 3, 7, 8), (1, 70, 5, 64, 5, 16, 16),
                                   (2, 9, 4, 33, 2, 3, 4)])
@pytest.mark.parametrize("h0, reset", [(False, False), (True, True), (True, False)])
def test_kernel_matches_chunkscan_forward_and_its_saved_states(shape, h0, reset):
    """The kernel's y, final state and chunk states H == ChunkScan's PyTorch forward (p = 64 and 33
    reach the kernel's wide and narrow column tiles)."""
    b, l, h, p, g, n, Q = shape
    xdt, a, B, C, h0, seg = chunk_inputs(b, l, h, p, g, n, Q, h0, reset)
    y_ref, final_ref = ChunkScan.apply(xdt, a, B, C, h0, seg, Q)
    y, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, keep_states=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
    # H[k] is the state entering chunk k: the state after the first k·Q positions.
    for k in range(H.shape[1]):
        _, want = ChunkScan.apply(xdt[:, :k * Q], a[:, :k * Q], B[:, :k * Q], C[:, :k * Q], h0,
                                  None if seg is None else seg[:, :k], Q) if k else (None, h0)
        want = torch.zeros(b, h, p, n) if want is None else want
        got = H[:, k].view(b, g, n, h // g, p).permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Unpadded (the inference path): the same outputs for the first l positions.
    y2, final2, _ = chunk_scan_fwd_cpu(xdt[:, :l].contiguous(), a[:, :l].contiguous(), B[:, :l].contiguous(),
                                       C[:, :l].contiguous(), h0, seg, Q)
    torch.testing.assert_close(y2, y_ref[:, :l], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final2, final_ref, atol=1e-5, rtol=1e-5)


def backward_pair(shape, h0, reset, dy=True, dfinal=True, seed=0, lib=None):
    """(chunk_scan_bwd_cpu's, chunk_scan_bwd_ref's) gradients for the kernel's saved chunk states."""
    b, l, h, p, g, n, Q = shape
    xdt, a, B, C, h0, seg = chunk_inputs(b, l, h, p, g, n, Q, h0, reset, seed)
    y, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, keep_states=True)
    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=gen) if dy else None
    dfinal = torch.randn(final.shape, generator=gen) if dfinal else None
    args = (xdt, a, B, C, H, seg, dy, dfinal, Q, h0 is not None)
    return chunk_scan_bwd_cpu(*args, threads=2, lib=lib), chunk_scan_bwd_ref(*args)


def assert_grads_close(got, want):
    """Equal up to fp32 rounding of sums of O(Q·p) terms: the tolerance scales with each gradient's
    largest entry (d log Ā reaches ~70 at Q = 64 and is a cumulative sum of such terms)."""
    for name, g, w in zip(("dxdt", "da", "dB", "dC", "dh0"), got, want):
        if w is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g, w, atol=1e-5 + 2e-6 * w.abs().max().item(), rtol=1e-4, msg=name)


@pytest.mark.parametrize("shape", [(1, 37, 3, 5, 1, 4, 8), (2, 40, 6, 4, 3, 7, 8), (1, 70, 5, 64, 5, 16, 16),
                                   (2, 9, 4, 33, 2, 3, 4), (1, 64, 4, 16, 2, 32, 64)])
@pytest.mark.parametrize("h0, reset", [(False, False), (True, True), (True, False)])
def test_backward_kernel_matches_chunkscan_backward(shape, h0, reset):
    """The C++ backward's dΔx, d log Ā, dB, dC and dh0 == ChunkScan's PyTorch backward on the same
    saved tensors (a whole padded chunk past l, groups of several heads, resets, initial states)."""
    assert_grads_close(*backward_pair(shape, h0, reset))


@pytest.mark.parametrize("dy, dfinal", [(True, False), (False, True)])
def test_backward_kernel_with_one_gradient_missing(dy, dfinal):
    """Autograd hands None for an output that the loss ignores (the final state in training)."""
    assert_grads_close(*backward_pair((2, 21, 4, 8, 2, 5, 8), True, True, dy=dy, dfinal=dfinal))


def test_long_decay_reaches_exact_zero():
    """A state decayed past exp(-87) is exactly 0 (the kernel never builds denormals): after a
    position with log Ā = -200, the state is that position's input alone."""
    b, l, h, p, g, n, Q = 1, 16, 2, 3, 1, 2, 8
    xdt, a, B, C, h0, _ = chunk_inputs(b, l, h, p, g, n, Q, reset=False)
    a[:, 7] = -200.0
    y_ref, final_ref = ChunkScan.apply(xdt, a, B, C, h0, None, Q)
    y, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, None, Q, keep_states=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
    only_last = torch.einsum("hp,n->nhp", xdt[0, 7], B[0, 7, 0]).reshape(n, h * p)
    assert torch.equal(H[0, 1, 0], only_last)



@pytest.mark.parametrize("march", isa_targets())
def test_each_isa_build_matches_chunkscan(march):
    """The kernel compiled for AVX2-only and plain x86-64 (no AVX) computes what the native one does."""
    lib = library() if march == "native" else build_for(march, ("ssd_chunk.cpp",))
    for shape in [(1, 37, 3, 5, 1, 4, 8), (2, 70, 4, 64, 2, 16, 16)]:
        b, l, h, p, g, n, Q = shape
        xdt, a, B, C, h0, seg = chunk_inputs(b, l, h, p, g, n, Q)
        y_ref, final_ref = ChunkScan.apply(xdt, a, B, C, h0, seg, Q)
        y, final, _ = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, threads=2, lib=lib)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
        assert_grads_close(*backward_pair(shape, True, True, lib=lib))


def test_auto_picks_cpu_with_its_own_chunk_size():
    """On the CPU "auto" is the fused backend; it runs at CPU_CHUNK_SIZE whatever chunk_size says
    (the config's is the GPU kernels' tile), and L = 3 chunks of it + a remainder still equals the spec."""
    assert REGISTRY.resolve("auto", torch.device("cpu")).name == "cpu"
    x = make_inputs(1, 3 * CPU_CHUNK_SIZE + 5, 3, 4, 1, 5, h0=True, reset=True)
    with torch.no_grad():
        ref = ssd_scan(**x, chunk_size=256, dt_softplus=True, return_final_states=True, backend="ref")
        for chunk in (256, 7):
            got = ssd_scan(**x, chunk_size=chunk, dt_softplus=True, return_final_states=True, backend="cpu")
            for t, want in zip(got, ref):
                torch.testing.assert_close(t, want, atol=1e-5, rtol=1e-5)


def test_float64_goes_to_the_exact_torch_form():
    """fp64 (gradcheck) runs the unfused chunked form: gradcheck passes through backend "cpu"."""
    x = make_inputs(1, 6, 2, 2, 1, 2, dtype=torch.float64, h0=True)
    names = ["x", "dt", "B", "C", "initial_states"]
    leaves = [x[k].clone().requires_grad_(True) for k in names]
    f = lambda *t: ssd_scan(**{**x, **dict(zip(names, t))}, chunk_size=4, dt_softplus=True,
                            return_final_states=True, backend="cpu")
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("change, message", [
    (lambda t: {**t, "a": t["a"][:, :-1]}, "a must have shape"),
    (lambda t: {**t, "C": t["C"][..., :-1]}, "C must have shape"),
    (lambda t: {**t, "h0": t["h0"].double()}, "h0 must be float32"),
    (lambda t: {**t, "seg": t["seg"][:, :, :-1]}, "seg must have shape"),
    (lambda t: {**t, "Q": 0}, "need Q >= 1"),
    (lambda t: {**t, "B": t["B"].expand(-1, -1, 2, -1), "C": t["C"].expand(-1, -1, 2, -1)},
     r"g \| h"),
])
def test_bad_shapes_are_refused_before_the_kernel(change, message):
    xdt, a, B, C, h0, seg = chunk_inputs(1, 12, 3, 2, 1, 4, 4)
    t = change(dict(xdt=xdt, a=a, B=B, C=C, h0=h0, seg=seg, Q=4))
    with pytest.raises(ValueError, match=message):
        chunk_scan_fwd_cpu(**t)


@pytest.mark.parametrize("change, message", [
    (lambda t: {**t, "a": t["a"][:, :-1]}, "a must be"),
    (lambda t: {**t, "H": t["H"][..., :-1]}, "H must be"),
    (lambda t: {**t, "dy": t["dy"].double()}, "dy must be float32"),
    (lambda t: {**t, "dfinal": t["dfinal"][:, :-1]}, "dfinal must be"),
    (lambda t: {**t, "Q": 5}, "whole chunks"),
])
def test_backward_refuses_bad_shapes_before_the_kernel(change, message):
    xdt, a, B, C, h0, seg = chunk_inputs(1, 12, 3, 2, 1, 4, 4)
    _, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, 4, keep_states=True)
    t = change(dict(xdt=xdt, a=a, B=B, C=C, H=H, seg=seg, dy=torch.randn_like(xdt), dfinal=torch.randn_like(final),
                    Q=4, want_dh0=True))
    with pytest.raises(ValueError, match=message):
        chunk_scan_bwd_cpu(**t)


@pytest.mark.parametrize("D_kind", ["h", "hp", None])
def test_prefill_reads_views_of_the_projection_in_place(D_kind):
    """The mixer hands x, z, dt, B and C as column slices of one (b, l, ·) matmul output; the
    kernel reads them at their row stride (dt_limit clamps inside it too) and equals the spec."""
    b, l, h, p, g, n = 2, 21, 4, 3, 2, 5
    gen = torch.Generator().manual_seed(3)
    widths = [h * p, h * p, g * n, g * n, h]                                   # z, x, B, C, dt
    big = torch.randn(b, l, sum(widths) + 3, generator=gen)
    z, x, B, C, dt = big[..., 3:].split(widths, dim=-1)
    kw = dict(x=x.view(b, l, h, p), dt=dt, A=-torch.rand(h, generator=gen) - 0.1, B=B.view(b, l, g, n),
              C=C.view(b, l, g, n), D={"h": torch.randn(h), "hp": torch.randn(h, p), None: None}[D_kind],
              z=z.view(b, l, h, p), dt_bias=torch.randn(h, generator=gen) * 0.3,
              initial_states=torch.randn(b, h, p, n, generator=gen))
    assert not kw["x"].is_contiguous()
    with torch.no_grad():
        for limit in [(0.0, float("inf")), (0.2, 0.9)]:
            want = ssd_scan(**{k: v if v is None else v.contiguous() for k, v in kw.items()}, chunk_size=8,
                            dt_softplus=True, dt_limit=limit, return_final_states=True, backend="ref")
            got = ssd_scan_cpu(**kw, chunk_size=8, dt_softplus=True, dt_limit=limit, return_final_states=True)
            for t, w in zip(got, want):
                torch.testing.assert_close(t, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 45, 37, 24, 1, 13, 8), (3, 19, 36, 9, 3, 6, 16)])
def test_head_blocks_and_thread_shares_match_the_spec(shape, threads):
    """More (batch, head) pairs than one head block (the kernel walks up to 32 pairs chunk by chunk),
    shares of threads that split a batch's heads, p = 24 and 9 and n = 13 and 6 (the register tile's
    column and row tails): the fused prefill path == the spec, and the training forward's y, final
    state and chunk states == ChunkScan's."""
    b, l, h, p, g, n, Q = shape
    x = make_inputs(b, l, h, p, g, n, h0=True, reset=True, seed=threads)
    with torch.no_grad():
        want = ssd_scan(**x, chunk_size=Q, dt_softplus=True, return_final_states=True, backend="ref")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # ssd_scan_cpu hands the kernel torch's thread count
        try:
            got = ssd_scan_cpu(**x, chunk_size=Q, dt_softplus=True, return_final_states=True)
        finally:
            torch.set_num_threads(before)
    for t, w in zip(got, want):
        torch.testing.assert_close(t, w, atol=1e-5, rtol=1e-5)
    xdt, a, B, C, h0, seg = chunk_inputs(b, l, h, p, g, n, Q)
    y_ref, final_ref = ChunkScan.apply(xdt, a, B, C, h0, seg, Q)
    _, _, H_one = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, keep_states=True, threads=1)
    y, final, H = chunk_scan_fwd_cpu(xdt, a, B, C, h0, seg, Q, keep_states=True, threads=threads)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(H, H_one)
