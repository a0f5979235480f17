"""S4LM / S4DLM: the shared LM surface (forward, step, prefill, generate, save/load) and training."""
import pytest
import torch

from mambakit.models import REGISTRY, build, from_config
from mambakit.models.s4_lm import S4DLM, S4LM, S4Config, S4DConfig

TINY = dict(d_model=16, n_layer=2, vocab_size=30, d_state=8, dt_min=0.01, dt_max=0.5)


@pytest.fixture(params=["s4", "s4d"])
def model(request):
    return build(request.param, **TINY).eval()


def test_registry_and_presets():
    assert REGISTRY["s4"] is S4LM and REGISTRY["s4d"] is S4DLM
    assert isinstance(build("s4d", preset="tiny", init="inv"), S4DLM)
    assert type(from_config(S4Config(**TINY))) is S4LM
    assert type(from_config(S4DConfig(**TINY))) is S4DLM      # sibling configs, no isinstance clash
    with pytest.raises(ValueError, match="d_state must be even"):
        S4Config(d_state=7)
    with pytest.raises(ValueError, match="init must be one of"):
        S4DConfig(init="legs")
    with pytest.raises(ValueError, match="did you mean 'd_state'"):
        S4DConfig.from_dict({"dstate": 8})


def test_forward_equals_step_by_step_and_recurrent_mode(model):
    ids = torch.randint(0, 30, (2, 13))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(13)], 1)
        model.set_mode("recurrent")
        rec = model(ids)
    assert full.shape == (2, 13, 32)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rec, full, atol=1e-4, rtol=1e-4)
    assert cache.seqlen_offset == 13
    with pytest.raises(ValueError, match="mode must be"):
        model.set_mode("parallel")


def test_prefill_then_decode_equals_forward(model):
    ids = torch.randint(0, 30, (3, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3)
        pre = model(ids[:, :6], cache=cache)
        fork = cache.clone()
        rest = torch.stack([model.step(ids[:, t], cache) for t in range(6, 11)], 1)
        again = model(ids[:, 6:], cache=fork)
    torch.testing.assert_close(pre, full[:, :6], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, full[:, 6:], atol=1e-4, rtol=1e-4)


def test_batched_left_padded_generation_equals_one_by_one(model):
    a, b = torch.randint(1, 30, (1, 5)), torch.randint(1, 30, (1, 3))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    out = model.generate(batch, max_new_tokens=6, attention_mask=mask)
    torch.testing.assert_close(out[0, 5:], model.generate(a, max_new_tokens=6)[0, 5:])
    torch.testing.assert_close(out[1, 5:], model.generate(b, max_new_tokens=6)[0, 3:])


def test_save_load_round_trip(model, tmp_path):
    ids = torch.randint(0, 30, (2, 9))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = type(model).from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
    other = S4DLM if isinstance(model, S4LM) else S4LM
    with pytest.raises(ValueError, match="not a"):
        other.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_trains_on_a_toy_task(name):
    # next token = current token + 1 (mod 10): learnable from one step of context
    model = build(name, **TINY).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start = torch.randint(0, 10, (8, 1))
    seq = (start + torch.arange(17)) % 10
    losses = []
    for _ in range(25):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
