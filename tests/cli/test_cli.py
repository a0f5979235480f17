"""The command line, driven as a user would: a subprocess."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def mambakit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mambakit.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout)


def mambakit_each(arglists, timeout=300):
    """Independent CLI calls side by side, one per core (most of each is importing torch): their
    results in order. Each call keeps its own deadline."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda args: mambakit(*args, timeout=timeout), arglists))


def test_help_lists_verbs():
    r = mambakit("--help")
    assert r.returncode == 0
    for verb in ("demo", "train", "eval", "generate", "bench", "synth", "convert", "plot", "tokenizer"):
        assert verb in r.stdout


def test_train_then_generate(tmp_path):
    out = tmp_path / "ck"
    r = mambakit("train", "--steps", "3", "--seq-len", "32", "--batch-size", "2", "--d-model", "32",
                 "--max-bytes", "200000", "--out", str(out), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 3 and (out / "model.safetensors").is_file()
    r = mambakit("generate", str(out), "--prompt", "import ", "--max-new-tokens", "10", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert len(result["results"][0]["tokens"]) == len("import ") + 10


def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path):
    r = mambakit("generate", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    r = mambakit("train", "--steps", "0", "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_budget_sizes_only_the_requested_family_and_plot_kernel_refuses_non_ssm(tmp_path):
    out = tmp_path / "gru"
    # Mamba can't be sized to 30k parameters; asking for a GRU must not try to.
    r = mambakit("train", "--model", "gru", "--budget-params", "30000", "--steps", "1", "--seq-len", "16",
                 "--batch-size", "1", "--max-bytes", "100000", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = mambakit("plot", "kernel", "--checkpoint", str(out), "--out", str(tmp_path / "png"))
    assert r.returncode == 2 and "kernels exist only for LTI models" in r.stderr
    assert "Traceback" not in r.stderr
