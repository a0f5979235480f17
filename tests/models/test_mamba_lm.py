"""MambaLM in every mode: forward == step-by-step == prefill + decode; init; input checks."""

import pytest
import torch

from mambakit import MambaConfig, MambaLM
from mambakit.ops.cpu_kernels import available
from tests.conftest import tiny_mamba
from tests.models.helpers import assert_learns_a_repeating_pattern


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
    assert_learns_a_repeating_pattern(tiny_mamba(), padded_vocab=56)


@pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_lm_fused_training_step_equals_the_unfused_ops():
    """MambaLM's forward, loss and every parameter gradient with the fused mixer ("auto" on CPU)
    equal those of the unfused ops with the reference scan, on a batch of odd length."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=61, d_conv=3)
    fused = MambaLM(cfg)
    unfused = MambaLM(cfg)
    unfused.load_state_dict(fused.state_dict())
    unfused.set_scan_backend("ref")
    ids = torch.randint(0, 61, (3, 45))
    losses = []
    for model in (fused, unfused):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), unfused.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5 * q.grad.abs().max().item() + 1e-7, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_mixer_uses_the_fused_op_only_where_it_applies():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=1, vocab_size=61))
    mixer = model.backbone.layers[0].mixer
    xz = torch.randn(2, 5, 2 * mixer.d_inner)
    assert mixer._fused_inner_applies(xz)
    assert not mixer._fused_inner_applies(xz.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not mixer._fused_inner_applies(xz)
    state = mixer.allocate_state(2)
    with torch.inference_mode():
        assert mixer._fused_inner_applies(xz, state)          # carried state: inference only
    assert not mixer._fused_inner_applies(xz, state)
    mixer.scan_backend = "ref"
    assert not mixer._fused_inner_applies(xz)


@pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ compiler")
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
def test_chunked_prefill_at_every_weight_format_takes_the_fused_op_and_matches_the_unfused_ops(fmt, monkeypatch):
    """Generation's prefill (chunks continuing from the cache) with fp32, bf16 and int8 weights runs
    the fused op (its weights dequantized) and equals the unfused ops of the reference scan."""
    from mambakit import quantize
    from mambakit.modules import mamba as mamba_module

    torch.manual_seed(0)
    model = quantize(MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=61)).eval(), fmt)
    ids = torch.randint(0, 61, (2, 100))
    cuts = [(0, 33), (33, 67), (67, 100)]  # > 64 rows a chunk: the unfused int8 GEMMs dequantize too (no q8 GEMV)
    calls = []
    real = mamba_module.mamba_inner_continue
    monkeypatch.setattr(mamba_module, "mamba_inner_continue", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        cache = model.allocate_cache(2)
        chunked = torch.cat([model(ids[:, a:b], cache=cache) for a, b in cuts], 1)
        for layer in model.backbone.layers:
            layer.mixer.scan_backend = "ref"
        ref_cache = model.allocate_cache(2)
        unfused = torch.cat([model(ids[:, a:b], cache=ref_cache) for a, b in cuts], 1)
    assert len(calls) == 3 * 2                                  # every chunk, every layer
    torch.testing.assert_close(chunked, unfused, atol=1e-4, rtol=1e-4)
    for got, want in zip(cache.layers, ref_cache.layers):
        torch.testing.assert_close(got.conv, want.conv)
        torch.testing.assert_close(got.ssm, want.ssm, atol=1e-5, rtol=1e-4)
