import json

import pytest
import torch

from mambakit import MambaLM
from mambakit.io.files import CheckpointError
from tests.conftest import tiny_mamba


def test_save_load_round_trip_identical_logits(tmp_path):
    model = tiny_mamba()
    model.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MambaLM.from_pretrained(tmp_path / "ck")
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_missing_dir_corrupt_weights_and_mismatch(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        MambaLM.from_pretrained(tmp_path / "nope")
    tiny_mamba().save_pretrained(tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        MambaLM.from_pretrained(tmp_path / "ck")
    tiny_mamba().save_pretrained(tmp_path / "ck2")
    cfg = json.loads((tmp_path / "ck2" / "config.json").read_text())
    cfg["d_state"] = 4
    (tmp_path / "ck2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*A_log"):
        MambaLM.from_pretrained(tmp_path / "ck2")
    (tmp_path / "ck2" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config"):
        MambaLM.from_pretrained(tmp_path / "ck2")
    cfg["d_stat"] = 4
    (tmp_path / "ck2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="did you mean 'd_state'"):
        MambaLM.from_pretrained(tmp_path / "ck2")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_mamba()
    model.save_pretrained(tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mambakit.io.files.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny_mamba().save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert [p.name for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")] == []
