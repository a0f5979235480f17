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
    ({"norm_epsilon": float("nan")}, r"norm_epsilon must be a finite number, got nan"),
    ({"dt_scale": float("inf")}, r"dt_scale must be a finite number, got inf"),
])
def test_bad_configs_name_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig.from_dict(data)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown MambaConfig preset"):
        MambaConfig.preset("7b")


def test_non_finite_float_in_any_family_config_json_is_refused(tmp_path):
    # before: NaN in config.json (json accepts it) was loaded and the model emitted NUL bytes
    from mambakit.models import REGISTRY, model_class

    for name in REGISTRY:
        cls = model_class(name).config_class
        floats = [k for k, v in cls.preset("tiny").to_dict().items() if isinstance(v, float)]
        for key in floats:
            (tmp_path / "config.json").write_text(json.dumps({**cls.preset("tiny").to_dict(), key: float("nan")}))
            with pytest.raises(ValueError, match=f"{key} must be a finite number"):
                cls.load(tmp_path / "config.json")
