"""benchmarks/bench_gpu.py as a user runs it, without a GPU: its argument checks, and a dry run on
CPU with the time budget spent at once (every case recorded as skipped), which still writes the
JSON report and the plot. (The measured dry run, --dry-run alone, takes ~1 min under Triton's
interpreter; the GPU run needs a GPU and is never a test.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_bad_arguments_get_one_clear_error():
    r = bench("--batch", "0", "--dry-run")
    assert r.returncode == 2 and "--batch must be ≥ 1" in r.stderr
    r = bench("--lengths", "0")
    assert r.returncode == 2 and "--lengths and --contexts must be ≥ 1" in r.stderr


def test_dry_run_writes_report_and_plot(tmp_path):
    out = tmp_path / "gpu.json"
    r = bench("--dry-run", "--budget-s", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["dry_run"] and report["copy_bandwidth_bytes_per_s"] > 0
    assert {(row["L"], row["backward"]) for row in report["scan"]} == {(12, False), (12, True), (20, False), (20, True)}
    assert {row["L"] for row in report["ssd"]} == {12, 20}
    assert all(row["skipped"] == "time budget" for row in report["scan"] + report["ssd"] + report["model"]["training"])
    assert "parallel" in report["scan_impls"]
