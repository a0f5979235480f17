"""The edges of mamba_ssm's selective_scan_fn contract: what every backend refuses, and that the
refusal happens in the dispatch, before any compiled code indexes by a shape it was not given."""
import pytest
import torch

from mambakit.ops import available_backends, selective_scan

BACKENDS = [name for name, why in available_backends("cpu").items() if why is None]


def inputs(b=2, d=6, l=9, n=4):
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(b, d, l, generator=g), delta=torch.rand(b, d, l, generator=g),
                A=-torch.rand(d, n, generator=g) - 0.1, B=torch.randn(b, n, l, generator=g),
                C=torch.randn(b, n, l, generator=g))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b_groups,c_groups", [(3, None), (None, 2), (2, 3)])
def test_b_and_c_with_different_group_counts_are_refused(backend, b_groups, c_groups):
    # Before: the cpu kernel read C with B's group count (NaN, wrong output, a segfault at
    # b=4 d=64 n=16 l=4096) and "parallel" raised a raw torch error.
    x = inputs()
    for name, groups in (("B", b_groups), ("C", c_groups)):
        if groups is not None:
            x[name] = torch.randn(2, groups, 4, 9)
    with pytest.raises(ValueError, match=r"B has \d group\(s\) but C has \d"):
        selective_scan(**x, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_group_spelled_3d_or_4d_is_the_same(backend):
    x = inputs()
    want = selective_scan(**x, backend="ref")
    got = selective_scan(**{**x, "C": x["C"][:, None]}, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_independent_b_c_refused_with_the_spelling_that_works(backend):
    """mamba_ssm also takes B, C of shape (d, n). We refuse it and name the equivalent one-group-
    per-channel form; that form matches mamba_ssm's selective_scan_ref formula for (d, n) B/C
    (deltaB_u = einsum('bdl,dn,bdl->bdln'), y = einsum('bdn,dn->bd')), recomputed here."""
    x = inputs()
    d, n = x["A"].shape
    Bw, Cw = torch.randn(d, n), torch.randn(d, n)
    with pytest.raises(ValueError, match=r"B of shape \(6, 4\).*not supported.*expand\(2, -1, -1, 9\)"):
        selective_scan(**{**x, "B": Bw}, backend=backend)
    expand = lambda W: W[None, :, :, None].expand(2, -1, -1, 9)
    got = selective_scan(**{**x, "B": expand(Bw), "C": expand(Cw)}, backend=backend)
    h, ys = torch.zeros(2, d, n), []
    for t in range(9):
        dt = x["delta"][:, :, t, None]
        h = torch.exp(dt * x["A"]) * h + dt * Bw * x["u"][:, :, t, None]
        ys.append((h * Cw).sum(-1))
    torch.testing.assert_close(got, torch.stack(ys, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_complex_a_refused(backend):
    x = inputs()
    with pytest.raises(ValueError, match="complex A .* not supported"):
        selective_scan(**{**x, "A": torch.complex(x["A"], x["A"])}, backend=backend)
