"""Mamba2LM: mamba_ssm's parameter names and initialisation, every config variant's modes agree
(forward == prefill + step, every SSD backend), packed documents, left padding, learning, config
errors. (The shared suite in test_conformance.py covers generation, save/load and input checks;
test_mamba2_interop.py compares logits with transformers' Mamba2ForCausalLM.)"""

import pytest
import torch

from mambakit import Mamba2Config, Mamba2LM
from tests.models.helpers import assert_learns_a_repeating_pattern, prefill_then_steps


def tiny_mamba2(**overrides):
    fields = dict(d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=16, chunk_size=4)
    return Mamba2LM(Mamba2Config(**{**fields, **overrides})).eval()


def test_parameter_names_shapes_and_init_follow_mamba_ssm():
    model = tiny_mamba2(ngroups=2)
    names = dict(model.named_parameters())
    mixer = "backbone.layers.0.mixer."
    d_in, h, conv_dim = 64, 4, 64 + 2 * 2 * 8
    shapes = {"in_proj.weight": (d_in + conv_dim + h, 32), "conv1d.weight": (conv_dim, 1, 4),
              "conv1d.bias": (conv_dim,), "dt_bias": (h,), "A_log": (h,), "D": (h,),
              "norm.weight": (d_in,), "out_proj.weight": (32, d_in)}
    for key, shape in shapes.items():
        assert tuple(names[mixer + key].shape) == shape, key
    assert sorted(k[len(mixer):] for k in names if k.startswith(mixer)) == sorted(shapes)
    assert tuple(names["backbone.embedding.weight"].shape) == (64, 32)  # vocab 50 padded to 16s
    assert model.lm_head.weight is model.backbone.embedding.weight
    m = model.backbone.layers[0].mixer
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16                              # A_init_range
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(m.D == 1) and torch.all(m.norm.weight == 1)
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.005


VARIANTS = [dict(), dict(ngroups=2), dict(D_has_hdim=True), dict(rmsnorm=False),
            dict(norm_before_gate=True, ngroups=4), dict(dt_limit=(0.01, 0.05), conv_bias=False, bias=True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_forward_prefill_step_and_backends_agree(variant):
    model = tiny_mamba2(**variant)
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(prefill_then_steps(model, ids, 6)[0], full, atol=1e-4, rtol=1e-4)
        for backend in ("ref", "quadratic"):
            model.set_ssd_backend(backend)
            torch.testing.assert_close(model(ids), full, atol=1e-4, rtol=1e-4)


def test_reset_makes_packed_documents_independent():
    model = tiny_mamba2()
    a, b = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    reset = torch.zeros(1, 12, dtype=torch.bool)
    reset[0, 7] = True
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), reset=reset)
        torch.testing.assert_close(packed[:, :7], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[:, 7:], model(b), atol=1e-5, rtol=1e-5)


def test_left_padded_rows_give_the_logits_they_give_alone():
    model = tiny_mamba2()
    short = torch.randint(0, 50, (1, 4))
    ids = torch.cat([torch.full((1, 5), 7), short], 1)
    ids = torch.cat([ids, torch.randint(0, 50, (1, 9))])
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        torch.testing.assert_close(batch[0, 5:], model(short)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch[1], model(ids[1:])[0], atol=1e-5, rtol=1e-5)


def test_training_reduces_loss_on_a_repeating_pattern():
    assert_learns_a_repeating_pattern(tiny_mamba2(), padded_vocab=64)


def test_presets_match_the_published_sizes():
    cfg = Mamba2Config.preset("130m")
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.headdim, cfg.nheads, cfg.padded_vocab_size) == \
        (768, 24, 128, 64, 24, 50288)
    with torch.device("meta"):
        assert 125e6 < Mamba2LM(cfg).num_parameters() < 135e6
    assert [Mamba2Config.preset(p).n_layer for p in ("370m", "780m", "1.3b", "2.7b")] == [48, 48, 48, 64]


@pytest.mark.parametrize("fields, message", [
    (dict(headdim=48), r"d_inner = expand·d_model = 64 must be a multiple of headdim \(48\)"),
    (dict(ngroups=3), r"nheads = 4 must be a multiple of ngroups \(3\)"),
    (dict(dt_limit=[0.1]), r"dt_limit must be a pair"),
    (dict(d_ssm=32), r"d_ssm=32 < d_inner=64 .* not supported"),
    (dict(head_dim=16), r"unknown Mamba2Config field\(s\): 'head_dim' \(did you mean 'headdim'\?\)"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        Mamba2Config.from_dict({"d_model": 32, "headdim": 16, **fields})


def test_gated_rmsnorm_matches_transformers():
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    from mambakit.modules.norm import RMSNormGated

    ours, theirs = RMSNormGated(12, eps=1e-5, group_size=4), MambaRMSNormGated(12, group_size=4, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    y, z = torch.randn(3, 5, 12), torch.randn(3, 5, 12)
    torch.testing.assert_close(ours(y, z), theirs(y, z), atol=1e-6, rtol=1e-5)
