"""Checkpoint interop: transformers MambaForCausalLM and mamba_ssm layouts load with equal logits,
and our exports load back into them. No download: every checkpoint is built here."""
import json

import pytest
import torch

from mambakit import MambaLM
from mambakit.formats.checkpoint import detect_format
from mambakit.io.files import CheckpointError
from mambakit.models import convert
from tests.conftest import tiny_mamba

transformers = pytest.importorskip("transformers")


def hf_model(**overrides):
    fields = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, state_size=8)
    fields.update(overrides)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**fields)).eval()
    with torch.no_grad():  # move every weight off its init value (norms = 1, biases = 0, ...)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def logits_of(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def mamba_ssm_keys(n_layer, conv_bias=True, bias=False):
    """The state_dict keys of mamba_ssm's MambaLMHeadModel, spelled out from its source."""
    keys = ["backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"]
    for i in range(n_layer):
        m = f"backbone.layers.{i}.mixer."
        keys += [m + "in_proj.weight", m + "conv1d.weight", m + "x_proj.weight", m + "dt_proj.weight",
                 m + "dt_proj.bias", m + "A_log", m + "D", m + "out_proj.weight", f"backbone.layers.{i}.norm.weight"]
        keys += [m + "conv1d.bias"] if conv_bias else []
        keys += [m + "in_proj.bias", m + "out_proj.bias"] if bias else []
    return sorted(keys)


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(tie_word_embeddings=False, use_bias=True, use_conv_bias=False, residual_in_fp32=False,
         layer_norm_epsilon=1e-6, time_step_rank=3, conv_kernel=3, expand=3),
])
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, overrides):
    hf = hf_model(**overrides)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_format(json.loads((tmp_path / "hf" / "config.json").read_text())) == "transformers"
    model = MambaLM.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 50, (2, 11))
    torch.testing.assert_close(logits_of(model, ids), logits_of(hf, ids), atol=1e-4, rtol=0)
    assert model.config.norm_epsilon == hf.config.layer_norm_epsilon
    assert (model.lm_head.weight is model.backbone.embedding.weight) == hf.config.tie_word_embeddings


def test_sharded_and_bin_transformers_checkpoints_load(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, 50, (1, 7))
    torch.testing.assert_close(logits_of(MambaLM.from_pretrained(tmp_path / "hf"), ids),
                               logits_of(hf, ids), atol=1e-4, rtol=0)
    (tmp_path / "bin").mkdir()                        # the older pytorch_model.bin layout
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    torch.testing.assert_close(logits_of(MambaLM.from_pretrained(tmp_path / "bin"), ids),
                               logits_of(hf, ids), atol=1e-4, rtol=0)


def test_our_export_loads_into_transformers(tmp_path):
    model = tiny_mamba(vocab_size=50)                 # padded to 56 rows, as mamba_ssm pads
    model.save_pretrained(tmp_path / "out", format="transformers")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(logits_of(hf, ids), logits_of(model, ids), atol=1e-4, rtol=0)
    # and back: transformers -> mambakit keeps the logits too
    back = MambaLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(logits_of(back, ids), logits_of(model, ids), atol=1e-5, rtol=0)


def write_mamba_ssm_dir(directory, hf, vocab_size, pad_multiple):
    """A mamba_ssm checkpoint, written by hand from its documented names, holding hf's weights."""
    directory.mkdir()
    c = hf.config
    config = dict(d_model=c.hidden_size, d_intermediate=0, n_layer=c.num_hidden_layers,
                  vocab_size=vocab_size, ssm_cfg=dict(d_state=c.state_size, layer="Mamba1"),
                  attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=True,
                  fused_add_norm=True, pad_vocab_size_multiple=pad_multiple, tie_embeddings=True)
    (directory / "config.json").write_text(json.dumps(config))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v
             for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    assert sorted(state) == mamba_ssm_keys(c.num_hidden_layers)
    torch.save(state, directory / "pytorch_model.bin")


def test_mamba_ssm_checkpoint_loads_and_round_trips(tmp_path):
    hf = hf_model(vocab_size=56)                      # mamba_ssm pads 50 -> 56 (multiple of 8)
    write_mamba_ssm_dir(tmp_path / "ssm", hf, vocab_size=50, pad_multiple=8)
    model = MambaLM.from_pretrained(tmp_path / "ssm")
    assert model.config.vocab_size == 50 and model.config.padded_vocab_size == 56
    ids = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(logits_of(model, ids), logits_of(hf, ids), atol=1e-4, rtol=0)

    model.save_pretrained(tmp_path / "out", format="mamba_ssm")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "pytorch_model.bin"]
    state = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert sorted(state) == mamba_ssm_keys(2)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["d_model"] == 32 and config["ssm_cfg"]["d_state"] == 8 and config["vocab_size"] == 50
    assert detect_format(config) == "mamba_ssm"
    back = MambaLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(logits_of(back, ids), logits_of(hf, ids), atol=1e-4, rtol=0)


# mamba_ssm/models/config_mamba.py: the fields of its MambaConfig dataclass (config.json is
# passed as MambaConfig(**config), so any other key is a TypeError there).
MAMBA_SSM_CONFIG_FIELDS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg",
                           "attn_layer_idx", "attn_cfg", "rms_norm", "residual_in_fp32",
                           "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}


def test_mamba_ssm_export_writes_only_fields_its_config_accepts(tmp_path):
    tiny_mamba(vocab_size=50).save_pretrained(tmp_path / "ok", format="mamba_ssm")
    assert set(json.loads((tmp_path / "ok" / "config.json").read_text())) <= MAMBA_SSM_CONFIG_FIELDS
    # before: norm_epsilon was written, and no mamba_ssm version loads that config
    with pytest.raises(ValueError, match="no norm_epsilon field.*1e-06.*cannot be exported"):
        tiny_mamba(vocab_size=50, norm_epsilon=1e-6).save_pretrained(tmp_path / "eps", format="mamba_ssm")
    assert not (tmp_path / "eps" / "config.json").exists()


class NotATensor:
    pass


def test_bin_with_pickled_object_is_refused(tmp_path):
    hf = hf_model(vocab_size=56)
    write_mamba_ssm_dir(tmp_path / "ssm", hf, vocab_size=50, pad_multiple=8)
    torch.save({"backbone.embedding.weight": NotATensor()}, tmp_path / "ssm" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled objects other than tensors") as err:
        MambaLM.from_pretrained(tmp_path / "ssm")
    # one line, and never torch's advice to turn safe loading off
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    torch.save({"backbone.embedding.weight": 3}, tmp_path / "ssm" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not named tensors.*backbone.embedding.weight"):
        MambaLM.from_pretrained(tmp_path / "ssm")
    (tmp_path / "ssm" / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        MambaLM.from_pretrained(tmp_path / "ssm")


def test_mismatched_keys_and_shapes_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model().save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(weights)
    del state["backbone.layers.1.mixer.D"]
    state["backbone.layers.0.mixer.bogus"] = torch.zeros(3)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys \['backbone.layers.1.mixer.D'\].*"
                                              r"unexpected keys \['backbone.layers.0.mixer.bogus'\]"):
        MambaLM.from_pretrained(tmp_path / "hf")
    hf_model().save_pretrained(tmp_path / "hf2")
    cfg = json.loads((tmp_path / "hf2" / "config.json").read_text())
    (tmp_path / "hf2" / "config.json").write_text(json.dumps({**cfg, "state_size": 4}))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*A_log"):
        MambaLM.from_pretrained(tmp_path / "hf2")
    (tmp_path / "hf2" / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon_mamba"}))
    with pytest.raises(CheckpointError, match="a FalconMamba checkpoint .* is not supported"):
        MambaLM.from_pretrained(tmp_path / "hf2")


def test_mamba_ssm_config_typos_and_mlp_blocks_are_rejected(tmp_path):
    write_mamba_ssm_dir(tmp_path / "ssm", hf_model(vocab_size=56), vocab_size=50, pad_multiple=8)
    path = tmp_path / "ssm" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "ssm_cfg": {"d_stat": 8}}))
    with pytest.raises(CheckpointError, match="ssm_cfg.d_stat"):
        MambaLM.from_pretrained(tmp_path / "ssm")
    path.write_text(json.dumps({**cfg, "attn_layer_idx": [1]}))
    with pytest.raises(CheckpointError, match="attn_cfg must give num_heads for the attention layers"):
        MambaLM.from_pretrained(tmp_path / "ssm")
    path.write_text(json.dumps({**cfg, "d_intermediate": 64}))   # an MLP per block, but no MLP weights
    with pytest.raises(CheckpointError, match="mlp.fc1.weight"):
        MambaLM.from_pretrained(tmp_path / "ssm")


def test_convert_copies_tokenizer_and_rejects_unknown_format(tmp_path):
    model = tiny_mamba()
    model.save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "tokenizer.json").write_text("{}")
    assert convert(tmp_path / "ck", tmp_path / "hf", "transformers") == "mambakit"
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == "{}"
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        model.save_pretrained(tmp_path / "x", format="onnx")


def test_transformers_round_trip_keeps_the_true_vocab_size(tmp_path):
    model = tiny_mamba(vocab_size=257)                # 264 embedding rows
    model.save_pretrained(tmp_path / "hf", format="transformers")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vocab_size"] == 264 and config["mambakit_vocab_size"] == 257
    assert transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf").config.vocab_size == 264
    back = MambaLM.from_pretrained(tmp_path / "hf")
    assert back.config.vocab_size == 257 and back.config.padded_vocab_size == 264
    with pytest.raises(ValueError, match="out of range for vocab_size 257"):
        back(torch.tensor([[260]]))                   # a padding id is no token
    ids = torch.randint(0, 257, (1, 6))
    torch.testing.assert_close(logits_of(back, ids), logits_of(model, ids), atol=1e-5, rtol=0)
    back.save_pretrained(tmp_path / "again", format="transformers")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == config
    bad = {**config, "mambakit_vocab_size": 300}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="mambakit_vocab_size 300"):
        MambaLM.from_pretrained(tmp_path / "hf")
