"""`mambakit synth` driven as a user would: a subprocess."""
import json

from tests.cli.test_cli import mambakit, mambakit_each


def test_synth_json_and_out(tmp_path):
    r = mambakit("synth", "induction-heads", "--model", "mamba", "--d-model", "16", "--n-layer", "1",
                 "--vocab-size", "6", "--seq-len", "16", "--steps", "3", "--batch-size", "4",
                 "--eval-lengths", "32", "48", "--eval-samples", "8", "--device", "cpu", "--then", "24:2",
                 "--out", str(tmp_path), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["task"] == "induction-heads" and result["model"] == "mamba" and result["parameters"] > 0
    assert result["config"]["steps"] == 3 and result["config"]["then"] == [[24, 2]] and result["steps_done"] == 5
    assert result["chance"] == 0.2
    assert [e["seq_len"] for e in result["eval"]] == [16, 32, 48]
    assert all(e["applicable"] and 0 <= e["token_accuracy"] <= 1 for e in result["eval"])
    written = json.loads((tmp_path / "induction-heads-mamba.json").read_text())
    assert written["eval"] == result["eval"] and (tmp_path / "induction-heads-mamba.png").stat().st_size > 0


def test_synth_table_marks_learned_positions_past_their_end():
    r = mambakit("synth", "selective-copying", "--model", "transformer", "--model-field", "positions=learned",
                 "--model-field", "max_seq_len=20", "--d-model", "16", "--n-layer", "1", "--vocab-size", "6",
                 "--num-tokens", "2", "--seq-len", "10", "--steps", "2", "--batch-size", "2",
                 "--eval-samples", "4", "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()[1:3]
    assert header.split()[:5] == ["model", "params", "steps", "final", "loss"] and "acc@10 (train)" in header
    assert row.split()[0] == "transformer" and row.split()[-1] == "n/a"      # acc@40 > max_seq_len 20
    assert "length 40: not applicable" in r.stdout


def test_synth_bad_input_is_one_line():
    bad = (["copying"], ["selective-copying", "--seq-len", "8", "--num-tokens", "16"],
           ["induction-heads", "--model-field", "d_state"], ["induction-heads", "--model-field", ":d_state=2"],
           ["induction-heads", "--paper", "--recipe", "cpu"],
           ["induction-heads", "--model", "mamba", "--model-field", "transformer:n_head=2"],
           ["table1", "--rows", "mamba2"], ["induction-heads", "--rows", "s6"],
           ["induction-heads", "--jobs", "2"], ["mqar-sweep", "--warm-start"],
           ["mqar", "--warm-start", "--out", "unused"], ["mqar", "--continue-at", "128:5"],
           ["mqar", "--model", "mamba", "gru", "--init-from", "somewhere"])
    for r in mambakit_each([["synth", *args, "--steps", "1"] for args in bad]):
        assert r.returncode != 0
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("mambakit synth: error:")


def test_synth_table1_prints_the_papers_numbers_and_writes_reports(tmp_path):
    args = ("synth", "table1", "--d-model", "8", "--n-layer", "1", "--seq-len", "34", "--steps", "2",
            "--batch-size", "2", "--eval-lengths", "--eval-samples", "4", "--device", "cpu", "--continue-at", "40:1",
            "--out", str(tmp_path), "--no-progress", "--json")
    # two rows first, as a second process would run them: their reports, no table yet
    r = mambakit(*args, "--rows", "mamba", "s6", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [row["model"] for row in rows] == ["s6", "mamba"]
    assert [row["result"]["steps_done"] for row in rows] == [2, 1]       # no-gate rows: twice the steps
    assert [[stage["steps_done"] for stage in row["stages"]] for row in rows] == [[4, 2], [2, 1]]
    assert [row["result"]["config"]["seq_len"] for row in rows] == [40, 40]  # scored where they ended
    assert json.loads((tmp_path / "table1-mamba-l34.json").read_text())["steps_done"] == 2
    assert (tmp_path / "table1-mamba.json").exists() and not (tmp_path / "table1.json").exists()
    first_s6 = json.loads((tmp_path / "table1-s6.json").read_text())
    # the full table picks up the finished rows from their checkpoints (same results) and adds the rest
    r = mambakit(*args[:-1])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "table1-s6.json").read_text())["final_loss"] == first_s6["final_loss"]
    lines = r.stdout.splitlines()
    assert "16 tokens to copy, vocabulary 16" in lines[0] and "then L=40 for 1 steps" in lines[0]
    assert "ours % L=34" in lines[1] and "ours % L=40" in lines[1]
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert set(rows) == {"S4, no gate", "S6, no gate", "Mamba block + S4D", "Mamba block + S6"}
    assert "18.3" in rows["S4, no gate"] and "99.8" in rows["Mamba block + S6"]
    table = json.loads((tmp_path / "table1.json").read_text())
    assert [row["model"] for row in table["rows"]] == ["s4", "s6", "mamba-s4d", "mamba"]
    assert (tmp_path / "table1.png").stat().st_size > 0 and (tmp_path / "table1-s6.png").stat().st_size > 0


def test_synth_mqar_sweep_json_and_plot(tmp_path):
    r = mambakit("synth", "mqar-sweep", "--model", "mamba", "gru", "--widths", "8", "16", "--lengths", "32",
                 "--n-layer", "1", "--steps", "1", "--batch-size", "2", "--eval-samples", "2", "--vocab-size", "64",
                 "--device", "cpu", "--out", str(tmp_path), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    points = json.loads(r.stdout)["points"]
    assert {(p["model"], p["d_model"], p["seq_len"], p["num_kv_pairs"]) for p in points} == {
        ("mamba", 8, 32, 2), ("mamba", 16, 32, 2), ("gru", 8, 32, 2), ("gru", 16, 32, 2)}
    assert all([run["lr"] for run in p["runs"]] == [1e-3, 3e-3, 1e-2] for p in points)     # Zoology: best of several
    assert all(p["result"]["config"]["stop_at"] == 0.99 for p in points)
    assert (tmp_path / "mqar-sweep.png").stat().st_size > 0
    both = mambakit("synth", "mqar-sweep", "--lr", "1e-3", "--lrs", "1e-2", "--no-progress")
    assert both.returncode != 0 and "not both" in both.stderr and "Traceback" not in both.stderr
    noise = mambakit("synth", "induction-heads", "--random-fillers", "--no-progress")
    assert noise.returncode != 0 and "MQAR setting" in noise.stderr and "Traceback" not in noise.stderr


def test_synth_model_fields_for_one_model_of_several():
    r = mambakit("synth", "induction-heads", "--model", "mamba", "transformer", "--model-field", "transformer:n_head=2",
                 "--model-field", "transformer:mlp=gelu", "--d-model", "16", "--n-layer", "1", "--vocab-size", "6",
                 "--seq-len", "12", "--steps", "1", "--batch-size", "2", "--eval-lengths", "--eval-samples", "2",
                 "--device", "cpu", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    mamba, transformer = json.loads(r.stdout)
    assert mamba["config"]["model_fields"] == {}
    assert transformer["config"]["model_fields"] == {"n_head": 2, "mlp": "gelu"}


def test_synth_then_alone_drops_the_recipes_stages():
    r = mambakit("synth", "induction-heads", "--recipe", "cpu", "--then", "--model", "transformer", "--d-model", "16",
                 "--n-layer", "1", "--seq-len", "12", "--steps", "1", "--batch-size", "2", "--eval-lengths",
                 "--eval-samples", "2", "--device", "cpu", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["config"]["then"] == [] and result["steps_done"] == 1
    assert result["config"]["eval_max_tokens"] == 2 ** 20               # the rest of the recipe holds
    assert result["model_config"]["embedding_init_std"] == 1.0
