"""ops.scan_cpu.scan_rows_fwd (the time-major inference scan of prefill, operands read in place as
views into the projections' outputs) against selective_scan_ref on the transposed operands."""
import pytest
import torch

from mambakit.ops.cpu_kernels import available
from mambakit.ops.scan import selective_scan_ref
from mambakit.ops.scan_cpu import scan_rows_fwd

pytestmark = pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ compiler")


def make(b, l, d, seed=0, n=16):
    """u, Δ, z as views into one (b, l, 3d) buffer, B and C into a (b, l, r + 2n) one (as x_proj's
    output), so every operand has a row stride other than its width."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    xz, x_dbl = r(b, l, 3 * d), r(b, l, 5 + 2 * n)
    return dict(u=xz[..., :d], delta=xz[..., d:2 * d] * 0.5, z=xz[..., 2 * d:], B=x_dbl[..., 5:5 + n],
                C=x_dbl[..., 5 + n:], A=-torch.rand(d, n, generator=g) - 0.1, D=r(d), delta_bias=r(d) * 0.3,
                initial_state=r(b, d, n))


def reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus=True):
    """selective_scan_ref in fp64 on the (b, d, l) / (b, n, l) transposes, returned as fp32."""
    t = lambda x: None if x is None else x.double().transpose(1, 2)
    f = lambda x: None if x is None else x.double()
    y, last = selective_scan_ref(t(u), t(delta), f(A), t(B), t(C), f(D), t(z), f(delta_bias), delta_softplus,
                                 return_last_state=True, initial_state=f(initial_state))
    return y.transpose(1, 2).float(), last.float()


@pytest.mark.parametrize("b,l,d", [(1, 1, 8), (2, 63, 40), (3, 130, 24), (1, 257, 64)])
@pytest.mark.parametrize("drop", [(), ("z", "D"), ("delta_bias", "initial_state"), ("softplus",)])
def test_matches_the_reference_on_views_with_and_without_each_option(b, l, d, drop):
    """d = 40 is five octets: one thread item of four and one of one; l crosses the 64-step blocks."""
    x = make(b, l, d, seed=b * l + d)
    softplus = "softplus" not in drop
    for name in drop:
        x.pop(name, None)
    if not softplus:  # Δ used as given: keep it positive so the states stay bounded
        x["delta"] = x["delta"].abs()
        x["delta_bias"] = x["delta_bias"].abs() if "delta_bias" in x else None
    with torch.inference_mode():
        y, last = scan_rows_fwd(**x, delta_softplus=softplus)
        want_y, want_last = reference(**{"D": None, "z": None, "delta_bias": None, "initial_state": None, **x},
                                      delta_softplus=softplus)
    torch.testing.assert_close(y, want_y, atol=2e-5, rtol=3e-5)   # |y| reaches ~100 without softplus
    torch.testing.assert_close(last, want_last, atol=2e-5, rtol=3e-5)


def test_other_layouts_are_copied_not_misread():
    """Time slices and strided channels (batch stride not l × row stride, or non-unit element
    stride) give the same result as contiguous copies."""
    x = make(2, 20, 16)
    with torch.inference_mode():
        y, last = scan_rows_fwd(**{k: v.contiguous() for k, v in x.items()})
        wide = torch.zeros(2, 20, 32)
        wide[..., ::2] = x["z"]
        got, got_last = scan_rows_fwd(**{**x, "z": wide[..., ::2]})
    torch.testing.assert_close(got, y)
    torch.testing.assert_close(got_last, last)


def test_split_sequence_carries_the_state():
    x = make(2, 100, 16)
    with torch.inference_mode():
        whole, last = scan_rows_fwd(**x)
        first = {k: v[:, :37] if k in ("u", "delta", "z", "B", "C") else v for k, v in x.items()}
        rest = {k: v[:, 37:] if k in ("u", "delta", "z", "B", "C") else v for k, v in x.items()}
        y1, h = scan_rows_fwd(**first)
        y2, last2 = scan_rows_fwd(**{**rest, "initial_state": h})
    torch.testing.assert_close(torch.cat([y1, y2], 1), whole)
    torch.testing.assert_close(last2, last)


@pytest.mark.parametrize("change, match", [
    (dict(u=torch.zeros(1, 4, 12)), r"multiple of 8"),
    (dict(A=torch.zeros(16, 8)), r"multiple of 8, A \(d, 16\)"),
    (dict(B=torch.zeros(1, 4, 16)[:, :3]), r"B must be \(1, 4, 16\)"),
    (dict(z=torch.zeros(1, 5, 16)), r"z must be \(1, 4, 16\), got \(1, 5, 16\)"),
    (dict(D=torch.zeros(15)), r"D must be contiguous \(16,\)"),
    (dict(initial_state=torch.zeros(2, 16, 16)), r"initial_state must be contiguous \(1, 16, 16\)"),
    (dict(delta=torch.zeros(1, 4, 16, dtype=torch.float64)), r"delta must be fp32"),
])
def test_bad_inputs_are_named_before_the_kernel_runs(change, match):
    x = {**make(1, 4, 16), **change}
    with torch.inference_mode(), pytest.raises(ValueError, match=match):
        scan_rows_fwd(**x)


def test_autograd_is_refused():
    x = make(1, 4, 16)
    x["D"] = x["D"].requires_grad_()
    with pytest.raises(ValueError, match="inference only"):
        scan_rows_fwd(**x)
