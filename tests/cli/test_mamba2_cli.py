"""`--model mamba2` where the command line chooses a model, driven as a user would: subprocesses."""
import json

from tests.cli.test_cli import mambakit


def test_train_then_generate_with_mamba2(tmp_path):
    run = tmp_path / "run"
    r = mambakit("train", "--model", "mamba2", "--d-model", "16", "--n-layer", "1", "--seq-len", "16",
                 "--batch-size", "2", "--steps", "2", "--max-bytes", "20000", "--out", str(run), "--json",
                 "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 2
    assert json.loads((run / "config.json").read_text())["model_type"] == "mamba2"
    r = mambakit("generate", str(run), "--prompt", "def ", "--max-new-tokens", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"][0]["tokens"]) == len("def ") + 5

