"""Mamba-2 checkpoint interop: transformers Mamba2ForCausalLM (built here, random small configs) and
mamba_ssm Mamba-2 layouts load with logits equal to transformers' within 1e-4, our exports load
back into them, greedy decoding agrees, `mambakit convert` handles them, and format detection
tells Mamba-1 from Mamba-2 from architectures we do not load. No download."""
import json
import subprocess
import sys

import pytest
import torch

from mambakit import Mamba2Config, Mamba2LM, MambaLM
from mambakit.formats.checkpoint import detect_architecture
from mambakit.io.files import CheckpointError
from mambakit.models import load_model
from tests.formats.test_interop import hf_model, logits_of

transformers = pytest.importorskip("transformers")


def hf_mamba2(**overrides):
    fields = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=16,
                  num_heads=4, n_groups=2, chunk_size=8, tie_word_embeddings=True)
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**{**fields, **overrides})).eval()
    with torch.no_grad():  # move every weight off its init value (norms = 1, biases = 0, ...)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


CONFIGS = [
    dict(),
    dict(tie_word_embeddings=False, use_bias=True, use_conv_bias=False, residual_in_fp32=False,
         layer_norm_epsilon=1e-6, conv_kernel=3, expand=3, num_heads=6, n_groups=3,
         time_step_limit=(0.01, 0.5), chunk_size=5),
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=["default", "variant"])
def test_transformers_mamba2_loads_with_equal_logits_and_exports_back(tmp_path, overrides):
    hf = hf_mamba2(**overrides)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_architecture(json.loads((tmp_path / "hf" / "config.json").read_text())) == \
        ("transformers", "mamba2")
    model = Mamba2LM.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 50, (2, 19))                          # several chunks, the last partial
    want = logits_of(hf, ids)
    torch.testing.assert_close(logits_of(model, ids), want, atol=1e-4, rtol=0)
    assert (model.lm_head.weight is model.backbone.embedding.weight) == hf.config.tie_word_embeddings

    model.save_pretrained(tmp_path / "out", format="transformers")
    again = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits_of(again, ids), want, atol=1e-4, rtol=0)
    back = load_model(tmp_path / "out")
    assert type(back) is Mamba2LM and back.config == model.config
    torch.testing.assert_close(logits_of(back, ids), logits_of(model, ids), atol=1e-6, rtol=0)


def test_greedy_decoding_matches_transformers_generate(tmp_path):
    hf = hf_mamba2()
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6, 5]])
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=8, do_sample=False)
    hf.save_pretrained(tmp_path / "hf")
    ours = Mamba2LM.from_pretrained(tmp_path / "hf").generate(prompt, max_new_tokens=8, temperature=0.0)
    assert ours.tolist() == theirs.tolist()


def mamba_ssm_mamba2_keys(n_layer):
    """The state_dict keys of mamba_ssm's MambaLMHeadModel with Mamba2 mixers, from its source."""
    keys = ["backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"]
    for i in range(n_layer):
        m = f"backbone.layers.{i}.mixer."
        keys += [m + k for k in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                                 "norm.weight", "out_proj.weight")] + [f"backbone.layers.{i}.norm.weight"]
    return sorted(keys)


def test_mamba_ssm_mamba2_checkpoint_loads_and_round_trips(tmp_path):
    hf = hf_mamba2(vocab_size=64)                     # mamba_ssm pads 50 -> 64 (multiple of 16)
    (tmp_path / "ssm").mkdir()
    config = dict(d_model=32, d_intermediate=0, n_layer=2, vocab_size=50,
                  ssm_cfg=dict(layer="Mamba2", d_state=8, headdim=16, ngroups=2, chunk_size=8),
                  attn_layer_idx=[], attn_cfg={}, rms_norm=True, residual_in_fp32=True,
                  fused_add_norm=True, pad_vocab_size_multiple=16, tie_embeddings=True)
    (tmp_path / "ssm" / "config.json").write_text(json.dumps(config))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    assert sorted(state) == mamba_ssm_mamba2_keys(2)
    torch.save(state, tmp_path / "ssm" / "pytorch_model.bin")

    assert detect_architecture(config) == ("mamba_ssm", "mamba2")
    model = load_model(tmp_path / "ssm")
    assert type(model) is Mamba2LM and model.config.padded_vocab_size == 64
    ids = torch.randint(0, 50, (2, 13))
    torch.testing.assert_close(logits_of(model, ids), logits_of(hf, ids), atol=1e-4, rtol=0)

    model.save_pretrained(tmp_path / "out", format="mamba_ssm")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["ssm_cfg"]["layer"] == "Mamba2" and saved["ssm_cfg"]["headdim"] == 16
    assert sorted(torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)) == \
        mamba_ssm_mamba2_keys(2)
    back = load_model(tmp_path / "out")
    assert back.config == model.config
    torch.testing.assert_close(logits_of(back, ids), logits_of(hf, ids), atol=1e-4, rtol=0)


def test_convert_cli_turns_transformers_mamba2_into_mamba_ssm(tmp_path):
    hf = hf_mamba2()
    hf.save_pretrained(tmp_path / "hf")
    proc = subprocess.run([sys.executable, "-m", "mambakit.cli.main", "convert", str(tmp_path / "hf"),
                           str(tmp_path / "ssm"), "--to", "mamba_ssm", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["src_format"] == "transformers"
    ids = torch.randint(0, 50, (1, 9))
    torch.testing.assert_close(logits_of(load_model(tmp_path / "ssm"), ids), logits_of(hf, ids),
                               atol=1e-4, rtol=0)


def test_format_detection_tells_mamba1_from_mamba2_from_unsupported(tmp_path):
    hf_model().save_pretrained(tmp_path / "m1")
    assert type(load_model(tmp_path / "m1")) is MambaLM
    assert detect_architecture({"d_model": 8, "ssm_cfg": {}}) == ("mamba_ssm", "mamba")
    assert detect_architecture(Mamba2Config(d_model=32, headdim=16).to_dict()) == ("mambakit", "mamba2")
    for model_type, name in [("falcon_mamba", "FalconMamba"), ("jamba", "Jamba"), ("zamba2", "Zamba2")]:
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps(
            {"architectures": ["X"], "model_type": model_type, "hidden_size": 32}))
        with pytest.raises(CheckpointError, match=f"a {name} checkpoint \\(transformers model_type "
                                                  f"'{model_type}'\\) is not supported"):
            load_model(tmp_path / model_type)
    with pytest.raises(CheckpointError, match="ssm_cfg.layer 'Mamba3' is not supported"):
        detect_architecture({"d_model": 8, "ssm_cfg": {"layer": "Mamba3"}})
    Mamba2LM(Mamba2Config(d_model=32, headdim=16)).save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="holds a 'mamba2' checkpoint, not a 'mamba' one"):
        MambaLM.from_pretrained(tmp_path / "ours")


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    model = Mamba2LM(Mamba2Config(d_model=32, headdim=16, norm_before_gate=True))
    with pytest.raises(ValueError, match="no equivalent of norm_before_gate=True"):
        model.save_pretrained(tmp_path / "x", format="transformers")
