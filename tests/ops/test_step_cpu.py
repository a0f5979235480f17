"""The fused CPU decode-step backends against their reference twins, and inside the model."""
import math

import pytest
import torch

from mambakit.ops import causal_conv1d_step, cpu_kernels
from tests.conftest import tiny_mamba

pytestmark = pytest.mark.skipif(cpu_kernels.available(torch.device("cpu")) is not None,
                                reason="no C++ compiler")


@pytest.mark.parametrize("b,d,k", [(1, 5, 4), (3, 24, 4), (2, 7, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_step_matches_reference(b, d, k, with_bias, activation):
    xz = torch.randn(b, 2 * d)                        # x is a strided view, as in the mixer
    state, w = torch.randn(b, d, k - 1), torch.randn(d, k)
    bias = torch.randn(d) if with_bias else None
    before = state.clone()
    y, new = causal_conv1d_step(xz[:, :d], state, w, bias, activation=activation, backend="cpu")
    y_ref, new_ref = causal_conv1d_step(xz[:, :d], state, w, bias, activation=activation, backend="ref")
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(new, new_ref)
    assert torch.equal(state, before)


def _tiny_mamba2():
    from mambakit import Mamba2Config, Mamba2LM

    return Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=8, ngroups=2,
                                 chunk_size=4)).eval()


@pytest.mark.parametrize("build,set_backend", [(tiny_mamba, "set_scan_backend"), (_tiny_mamba2, "set_ssd_backend")],
                         ids=["mamba", "mamba2"])
def test_model_decode_with_fused_step_equals_reference_step(build, set_backend):
    model = build()
    ids = torch.randint(0, 50, (3, 7))
    outs = {}
    with torch.inference_mode():
        for backend in ("auto", "ref"):
            getattr(model, set_backend)(backend)
            cache = model.allocate_cache(3)
            outs[backend] = torch.stack([model.step(ids[:, t], cache) for t in range(7)], 1)
    torch.testing.assert_close(outs["auto"], outs["ref"], atol=1e-5, rtol=1e-5)


# Mamba-2's SSD step: odd head counts, g > 1, odd p and n, D per head / per channel / absent,
# gate on and off, Δ limits, Δ without softplus (negative Δ stays unclamped under NO_LIMIT), and
# x, z, Δ, B, C as row-strided views into one buffer, as the mixer passes them.
@pytest.mark.parametrize("b,h,p,g,n", [(1, 3, 5, 1, 7), (2, 6, 4, 3, 16), (3, 5, 1, 5, 1)])
@pytest.mark.parametrize("D_kind,gate,softplus,dt_limit",
                         [("h", True, True, (0.0, math.inf)), ("hp", False, True, (0.05, 0.3)),
                          (None, True, False, (0.0, math.inf))])
def test_ssd_step_matches_reference(b, h, p, g, n, D_kind, gate, softplus, dt_limit):
    from mambakit.ops import ssd_step

    gen = torch.Generator().manual_seed(b * 100 + h)
    row = torch.randn(b, 2 * h * p + 2 * g * n + h + 3, generator=gen)   # z | x | B | C | Δ | spare
    z, x, B, C, dt = row[:, :-3].split([h * p, h * p, g * n, g * n, h], dim=-1)
    state, A = torch.randn(b, h, p, n, generator=gen), -torch.rand(h, generator=gen) * 2
    D = {"h": torch.randn(h, generator=gen), "hp": torch.randn(h, p, generator=gen), None: None}[D_kind]
    args = (state, x.view(b, h, p), dt, A, B.view(b, g, n), C.view(b, g, n))
    kw = dict(D=D, z=z.view(b, h, p) if gate else None, dt_bias=torch.randn(h, generator=gen) * 0.3,
              dt_softplus=softplus, dt_limit=dt_limit)
    before = state.clone()
    y, new = ssd_step(*args, **kw, backend="cpu")
    y_ref, new_ref = ssd_step(*args, **kw, backend="ref")
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, new_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(state, before)


def test_ssd_step_matches_transformers_selective_state_update():
    """Outside reference in fp32 (the kernel's dtype): transformers' Mamba-2 state update."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_selective_state_update

    from mambakit.ops import ssd_step

    b, h, p, g, n = 2, 6, 4, 3, 5
    x, dt, z = torch.randn(b, h, p), torch.randn(b, h) * 0.5, torch.randn(b, h, p)
    A, B, C, D, bias = -torch.rand(h) - 0.1, torch.randn(b, g, n), torch.randn(b, g, n), torch.randn(h), torch.randn(h)
    state = torch.randn(b, h, p, n)
    want = state.clone()
    want_y = mamba2_selective_state_update(
        want, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B, C,
        D[:, None].expand(-1, p), z=z, dt_bias=bias[:, None].expand(-1, p), dt_softplus=True)
    y, new = ssd_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, backend="cpu")
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new, want, atol=1e-5, rtol=1e-5)
