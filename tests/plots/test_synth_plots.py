"""The accuracy-vs-length figure draws reports kept without their per-step losses."""
import pytest

from mambakit.plots.synth import plot_accuracy_vs_length, plot_synth_runs


def report(model, accuracies):
    return {"task": "induction-heads", "model": model, "chance": 1 / 15, "config": {"seq_len": 256},
            "eval": [{"seq_len": 2 ** (6 + i), "applicable": a is not None, "token_accuracy": a}
                     for i, a in enumerate(accuracies)]}


def test_accuracy_vs_length_draws_reports_without_losses(tmp_path):
    runs = [report("mamba", [1.0, 1.0, 1.0, 0.9]), report("transformer", [0.9, 0.93, 0.8, None])]
    plot_accuracy_vs_length(runs, tmp_path / "ih.png")
    assert (tmp_path / "ih.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):              # the two-panel report needs the losses
        plot_synth_runs(runs, tmp_path / "full.png")
