"""`mambakit bench` reports measurements (never asserts speed: machines are noisy)."""
import json

from tests.cli.test_cli import mambakit


def test_bench_scan_and_model_report_json(tmp_path):
    r = mambakit("bench", "scan", "--d", "12", "--lengths", "9", "--repeats", "1",
                 "--backends", "cpu,ref", "--backward", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["backend"] for row in rows] == ["cpu", "ref"]
    assert all(row["l"] == 9 and row["backward"] and row["elements_per_s"] > 0 for row in rows)
    r = mambakit("bench", "model", "--preset", "tiny", "--prefill", "16", "--contexts", "4", "12", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model"] == "MambaLM" and set(result["decode_ms_per_token"]) == {"4", "12"}


def test_bench_bad_backend_is_one_line_error():
    r = mambakit("bench", "scan", "--backends", "warp-drive", "--d", "4", "--lengths", "3")
    assert r.returncode == 2 and "unknown selective_scan backend 'warp-drive'" in r.stderr
    assert "Traceback" not in r.stderr
