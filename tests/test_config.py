import json

import pytest

from mambakit import MambaConfig


def test_presets_and_derived_fields():
    cfg = MambaConfig.preset("130m")
    assert (cfg.d_model, cfg.n_layer, cfg.padded_vocab_size, cfg.resolved_dt_rank) == (768, 24, 50280, 48)
    assert MambaConfig.preset("2.8b").n_layer == 64
    assert MambaConfig.preset("tiny", d_model=48).d_model == 48


def test_round_trip_through_json(tmp_path):
    cfg = MambaConfig(d_model=40, n_layer=3, vocab_size=100, dt_rank=5)
    cfg.save(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "mamba" and data["dt_rank"] == 5
    assert MambaConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("data,match", [
    ({"d_modle": 64}, r"unknown MambaConfig field.*'d_modle'.*did you mean 'd_model'"),
    ({"d_model": 0}, r"d_model must be >= 1"),
    ({"d_state": "16"}, r"d_state must be an int"),
    ({"dt_min": 0.5, "dt_max": 0.1}, r"dt_min"),
    ({"dt_rank": "big"}, r"dt_rank must be an int"),
    ({"rms_norm": "yes"}, r"rms_norm must be true/false"),
    ({"model_type": "transformer"}, r"model_type 'transformer'"),
])
def test_bad_configs_name_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig.from_dict(data)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown MambaConfig preset"):
        MambaConfig.preset("7b")
