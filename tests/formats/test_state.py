"""Recurrent state as a first-class object: save/load, resume == concatenated, differentiable."""
import pytest
import torch

from mambakit.io.files import CheckpointError
from mambakit.state import load_state, save_state
from tests.conftest import tiny_mamba


def test_resume_from_saved_state_equals_the_concatenated_sequence(tmp_path):
    model = tiny_mamba()
    a, b = torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (2, 5))
    cache = model.allocate_cache(2)
    with torch.no_grad():
        model(a, cache=cache)
        save_state(cache, tmp_path / "a.state")
        resumed = load_state(tmp_path / "a.state", model)
        assert resumed.seqlen_offset == 6
        whole = model(torch.cat([a, b], 1))
        torch.testing.assert_close(model(b, cache=resumed), whole[:, 6:], atol=1e-5, rtol=1e-5)

    cont = model.generate(b, max_new_tokens=7, cache=load_state(tmp_path / "a.state", model))
    ref = model.generate(torch.cat([a, b], 1), max_new_tokens=7)
    assert torch.equal(cont[:, 5:], ref[:, 11:])


def test_generate_leaves_the_cache_after_every_returned_token():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (1, 4))
    cache = model.allocate_cache(1)
    out = model.generate(ids, max_new_tokens=5, cache=cache)
    assert cache.seqlen_offset == 9
    more = model.generate(torch.tensor([[3]]), max_new_tokens=4, cache=cache)
    ref = model.generate(torch.cat([out, torch.tensor([[3]])], 1), max_new_tokens=4)
    assert torch.equal(more[:, 1:], ref[:, 10:])


def test_load_state_checks_the_model(tmp_path):
    cache = tiny_mamba().allocate_cache(1)
    save_state(cache, tmp_path / "s")
    with pytest.raises(CheckpointError, match=r"layers.0.ssm: \(1, 64, 8\) vs model \(1, 64, 4\)"):
        load_state(tmp_path / "s", tiny_mamba(d_state=4))
    with pytest.raises(CheckpointError, match=r"missing \['layers.2.conv', 'layers.2.ssm'\]"):
        load_state(tmp_path / "s", tiny_mamba(n_layer=3))
    tiny_mamba().save_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not a mambakit state file"):
        load_state(tmp_path / "ck" / "model.safetensors", tiny_mamba())


def test_s4d_state_round_trips(tmp_path):
    from mambakit.models import build

    model = build("s4d", "tiny").eval()
    ids = torch.randint(0, 257, (1, 9))
    with torch.no_grad():
        cache = model.allocate_cache(1)
        model(ids[:, :5], cache=cache)
        save_state(cache, tmp_path / "s4d.state")
        resumed = model(ids[:, 5:], cache=load_state(tmp_path / "s4d.state", model))
        whole = model(ids)
    torch.testing.assert_close(resumed, whole[:, 5:], atol=1e-4, rtol=1e-4)


def _final_state_loss(model, ids, initial, use_step):
    """A weighted sum of every layer's final conv and SSM state, from a given initial state."""
    cache = model.allocate_cache(ids.shape[0])
    for layer, (conv, ssm) in zip(cache.layers, initial):
        layer.conv, layer.ssm = conv, ssm
    if use_step:
        for t in range(ids.shape[1]):
            model.step(ids[:, t], cache)
    else:
        model(ids, cache=cache)
    g = torch.Generator().manual_seed(1)
    return sum((s.conv * torch.randn(s.conv.shape, generator=g)).sum()
               + (s.ssm * torch.randn(s.ssm.shape, generator=g)).sum() for s in cache.layers)


@pytest.mark.parametrize("backend", ["ref", "auto"])
def test_final_state_is_differentiable_and_matches_the_step_path(backend):
    """Gradients through forward's final state (the scan backend's last_state) == gradients through
    the token-by-token recurrence, for the parameters and for the initial state."""
    model = tiny_mamba(d_model=16, d_state=4)
    model.set_scan_backend(backend)
    ids = torch.randint(0, 50, (2, 7))
    template = model.allocate_cache(2)
    initial = [(0.3 * torch.randn_like(s.conv), 0.3 * torch.randn_like(s.ssm)) for s in template.layers]
    grads = []
    for use_step in (False, True):
        leaves = [(c.clone().requires_grad_(), s.clone().requires_grad_()) for c, s in initial]
        model.zero_grad()
        _final_state_loss(model, ids, leaves, use_step).backward()
        # a parameter the loss does not reach may get None or zeros depending on the backend
        params = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                  for n, p in model.named_parameters()}
        grads.append((params, [(c.grad, s.grad) for c, s in leaves]))
    (p_fwd, i_fwd), (p_step, i_step) = grads
    for name in ("backbone.layers.1.mixer.A_log", "backbone.layers.0.mixer.in_proj.weight"):
        assert float(p_fwd[name].abs().sum()) > 0, name
    for name in p_fwd:
        torch.testing.assert_close(p_fwd[name], p_step[name], atol=1e-5, rtol=1e-4, msg=name)
    for (cf, sf), (cs, ss) in zip(i_fwd, i_step):
        torch.testing.assert_close(cf, cs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sf, ss, atol=1e-5, rtol=1e-4)
    assert all(float(s.abs().sum()) > 0 for _, s in i_fwd)
