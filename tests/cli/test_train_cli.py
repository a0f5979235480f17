"""`mambakit train / eval / tokenizer` driven as a user would: subprocesses."""
import json
import signal
import subprocess
import sys
import time

from tests.cli.test_cli import mambakit, mambakit_each

TINY = ["--d-model", "16", "--n-layer", "1", "--seq-len", "16", "--batch-size", "2", "--no-progress"]


def write_jsonl(path, n=40):
    path.write_text("".join(json.dumps({"body": f"def f{i}(x):\n    return x * {i}\n"}) + "\n"
                            for i in range(n)))
    return path


def test_bpe_then_train_on_jsonl_then_eval(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl")
    r = mambakit("tokenizer", "train", "--data", str(data), "--text-field", "body", "--vocab-size", "300",
                 "--out", str(tmp_path / "tok"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vocab_size"] <= 300
    run = tmp_path / "run"
    r = mambakit("train", "--data", str(data), "--text-field", "body", "--tokenizer", str(tmp_path / "tok"),
                 "--steps", "3", "--ckpt-every", "2", "--out", str(run), "--json", *TINY)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 3 and summary["val"]["bytes"] > summary["val"]["tokens"] / 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 3]
    assert (run / "tokenizer.json").is_file() and (run / "checkpoints" / "step-00000003").is_dir()
    r = mambakit("eval", str(run), "--data", str(data), "--text-field", "body", "--seq-len", "16", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert abs(result["bits_per_byte"] - summary["val_bits_per_byte"]) < 1.0
    # training longer changes the schedule: refused unless asked for, then one warning line
    r = mambakit("train", "--steps", "5", "--out", str(run), "--resume", "--data", str(data),
                 "--text-field", "body", "--allow-changes", "--json", *TINY)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] == 3
    assert "mambakit: warning: resuming" in r.stderr and "steps 3 -> 5" in r.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mambakit.cli.main", "train", "--steps", "100000",
                             "--max-bytes", "100000", "--out", str(run), "--ckpt-every", "0", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, f"training exited early: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "no two metrics lines within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert (run / "checkpoints" / "latest").is_file()


def test_bad_paths_and_options_fail_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    bad = [
        ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")],
        ["train", "--out", str(tmp_path / "file"), *TINY],
        ["train", "--out", str(tmp_path / "file" / "sub"), *TINY],
        ["train", "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")],
        ["train", "--dtype", "fp8", "--out", str(tmp_path / "o3")],
        ["train", "--model", "nosuchmodel", "--out", str(tmp_path / "o4")],
        ["eval", str(tmp_path / "missing")],
        ["tokenizer", "train", "--vocab-size", "10", "--out", str(tmp_path / "t"), "--max-bytes", "1000"],
    ]
    for args, r in zip(bad, mambakit_each(bad)):
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert "error:" in r.stderr.strip().splitlines()[-1], (args, r.stderr)   # after argparse usage


def test_bpe_learns_from_training_documents_only(tmp_path):
    from mambakit.data.corpus import is_val_key

    val_line = next(n for n in range(1, 200) if is_val_key(f"docs.jsonl:{n}"))
    lines = [{"body": "zyxwvu " * 200 if n == val_line else f"def f{n}(x):\n    return x\n"}
             for n in range(1, val_line + 5)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = mambakit("tokenizer", "train", "--data", str(tmp_path / "docs.jsonl"), "--text-field", "body",
                 "--vocab-size", "300", "--out", str(tmp_path / "tok"))
    assert r.returncode == 0, r.stderr
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "def" in "".join(vocab) and not any("zyx" in t for t in vocab)


def test_resume_from_a_corrupt_checkpoint_fails_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    r = mambakit("train", "--steps", "2", "--max-bytes", "50000", "--out", str(run), *TINY)
    assert r.returncode == 0, r.stderr
    step = run / "checkpoints" / "step-00000002"
    state_file, optim_file = step / "trainer_state.json", step / "optimizer.safetensors"
    good_state = json.loads(state_file.read_text())
    resume = ("train", "--steps", "3", "--max-bytes", "50000", "--out", str(run), "--resume", *TINY)
    tensors = load_file(optim_file)
    del tensors["rng/torch"]
    save_file(tensors, optim_file)
    state_file.write_text(json.dumps({k: v for k, v in good_state.items() if k != "param_groups"}))
    for corrupt in ("'param_groups' is missing", "'rng/torch' is missing"):
        r = mambakit(*resume)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert "error:" in last and "corrupt checkpoint" in last and corrupt in last, last
        state_file.write_text(json.dumps(good_state))
