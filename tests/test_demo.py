"""The demo's comparison: every model measured, plots and results written, samples produced."""
import json

import pytest

from mambakit import demo as cmp
from mambakit.models import config_for
from mambakit.perf import decode_latency_ms
from tests.conftest import tiny_mamba


@pytest.fixture
def tiny_sizes(monkeypatch):
    def sizes(names, budget, vocab_size):
        fields = {"mamba": dict(d_model=16, n_layer=1, d_state=4), "s4d": dict(d_model=16, n_layer=1)}
        return {n: config_for(n, None, vocab_size=vocab_size, **fields[n]) for n in names}
    monkeypatch.setattr(cmp, "equal_size_configs", sizes)


def test_compare_writes_table_data_plots_and_samples(tmp_path, tiny_sizes):
    cfg = cmp.CompareConfig.quick(models=("mamba", "s4d"), steps=3, seq_len=16, batch_size=2,
                                  max_bytes=100_000, contexts=(8, 32), sample_tokens=5, progress=False,
                                  eval_batches=2, decode_tokens=2)
    reports = cmp.compare(cfg, tmp_path)
    assert [r.name for r in reports] == ["mamba", "s4d"]
    for r in reports:
        assert r.steps == 3 and r.train_tokens == 3 * 2 * 16 and r.val["bits_per_byte"] > 0
        assert set(r.decode_ms) == {8, 32} and all(v > 0 for v in r.decode_ms.values())
        assert r.sample.startswith("def ") and r.peak_memory_mb >= 0
        assert (tmp_path / r.name / "model.safetensors").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["mamba", "s4d"]
    for png in ("loss_curves.png", "latency_vs_context.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_decode_latency_is_measured_after_a_prefill():
    assert decode_latency_ms(tiny_mamba(), context=16, n_tokens=2) > 0


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        cmp.equal_size_configs(("mamba", "nosuch"), 10_000, 257)


def test_equal_size_configs_are_close_in_size():
    from mambakit.models import from_config

    configs = cmp.equal_size_configs(("mamba", "transformer", "gru"), 300_000, 257)
    sizes = [from_config(c).num_parameters() for c in configs.values()]
    assert max(sizes) < 1.25 * min(sizes)
