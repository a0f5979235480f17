"""MambaLM in every mode: forward == step-by-step == prefill + decode; init; input checks."""
import math

import pytest
import torch

from tests.conftest import tiny_mamba


@pytest.mark.parametrize("batch,length", [(1, 1), (1, 13), (3, 9)])
def test_forward_equals_step_by_step(batch, length):
    model = tiny_mamba()
    ids = torch.randint(0, 50, (batch, length))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(length)], 1)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)
    assert cache.seqlen_offset == length


@pytest.mark.parametrize("batch", [1, 3])
def test_prefill_then_decode_equals_forward(batch):
    model = tiny_mamba()
    ids = torch.randint(0, 50, (batch, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch)
        pre = model(ids[:, :6], cache=cache)
        rest = torch.stack([model.step(ids[:, t], cache) for t in range(6, 11)], 1)
        # a second chunk of prefill continues from the cache too
        cache2 = model.allocate_cache(batch)
        model(ids[:, :4], cache=cache2)
        chunk = model(ids[:, 4:], cache=cache2)
    torch.testing.assert_close(pre, full[:, :6], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunk, full[:, 4:], atol=1e-4, rtol=1e-4)


def test_parameter_names_shapes_and_init_follow_mamba_ssm():
    model = tiny_mamba(d_model=32, n_layer=2, vocab_size=50, d_state=8)
    names = dict(model.named_parameters())
    mixer = "backbone.layers.0.mixer."
    shapes = {"in_proj.weight": (128, 32), "conv1d.weight": (64, 1, 4), "conv1d.bias": (64,),
              "x_proj.weight": (2 + 16, 64), "dt_proj.weight": (64, 2), "dt_proj.bias": (64,),
              "A_log": (64, 8), "D": (64,), "out_proj.weight": (32, 64)}
    for key, shape in shapes.items():
        assert tuple(names[mixer + key].shape) == shape, key
    assert tuple(names["backbone.embedding.weight"].shape) == (56, 32)  # vocab 50 padded to 56
    assert model.lm_head.weight is model.backbone.embedding.weight
    m = model.backbone.layers[0].mixer
    torch.testing.assert_close(m.A_log[3], torch.log(torch.arange(1, 9.0)))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(m.D == 1)
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("bad", [torch.tensor([[1, 50]]), torch.tensor([[-1, 3]])])
def test_bad_token_ids_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="out of range for vocab_size 50"):
        tiny_mamba()(bad)


def test_wrong_input_shape_or_dtype():
    model = tiny_mamba()
    with pytest.raises(ValueError, match=r"\(batch, seqlen\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="int64 or int32 tensor"):
        model(torch.ones(1, 3))


def test_training_reduces_loss_on_a_repeating_pattern():
    model = tiny_mamba().train()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 4])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert losses[0] == pytest.approx(math.log(56), rel=0.2)
