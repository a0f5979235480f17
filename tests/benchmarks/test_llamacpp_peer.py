"""benchmarks/llamacpp_peer.py without building llama.cpp: its reading of `llama-bench -o json`
(a fixture in the printer's format: llama-bench.cpp's json_printer, fields of `test::get_fields`)
and the ratios bench_lm reports against it."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import llamacpp_peer  # noqa: E402


def _test(n_prompt, n_gen, n_depth, samples_ns):
    """One test object as llama-bench's json_printer writes it (fields trimmed to the ones it has
    in every version we read, plus the timing fields)."""
    avg = sum(samples_ns) // len(samples_ns)
    return {"build_commit": "0c1e570", "cpu_info": "AMD EPYC", "backends": "CPU",
            "model_filename": "model-q8_0.gguf", "model_type": "mamba 0.1B Q8_0", "n_threads": 2,
            "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth, "test_time": "2026-12-01T06:00:00Z",
            "avg_ns": avg, "stddev_ns": 0, "avg_ts": 1e9 * (n_prompt + n_gen) / avg, "stddev_ts": 0.0,
            "samples_ns": samples_ns,
            "samples_ts": [1e9 * (n_prompt + n_gen) / s for s in samples_ns]}


FIXTURE = json.dumps([_test(512, 0, 0, [2_000_000_000, 1_600_000_000, 1_700_000_000]),
                      _test(2048, 0, 0, [8_000_000_000, 8_192_000_000, 7_900_000_000]),
                      _test(0, 32, 128, [320_000_000, 300_000_000, 310_000_000]),
                      _test(0, 32, 4096, [350_000_000, 340_000_000, 345_000_000])], indent=2)


def test_llama_bench_json_becomes_bench_lm_cases():
    cases = llamacpp_peer.to_cases(llamacpp_peer.parse_llama_bench(FIXTURE))
    assert cases["prefill"]["512"]["seconds"] == pytest.approx(1.7)             # median of samples
    assert cases["prefill"]["512"]["tokens_per_s"] == pytest.approx(512 / 1.7)
    assert cases["prefill"]["2048"]["tokens_per_s"] == pytest.approx(2048 / 8.0)
    assert cases["decode"]["128"]["ms_per_token"] == pytest.approx(310 / 32)    # per generated token
    assert cases["decode"]["4096"]["tokens_per_s"] == pytest.approx(32 / 0.345)


def test_ratios_pair_each_precision_with_its_llamacpp_type():
    peer = llamacpp_peer.to_cases(llamacpp_peer.parse_llama_bench(FIXTURE))
    results = {"prefill": {"mambakit int8": {"512": {"tokens_per_s": 602.4}, "2048": {"tokens_per_s": 512.0}},
                           "llama.cpp q8_0": peer["prefill"]},
               "decode": {"mambakit int8": {"128": {"ms_per_token": 4.84375}},
                          "mambakit fp32": {"128": {"ms_per_token": 30.0}},   # no f32 peer: no ratio
                          "llama.cpp q8_0": peer["decode"]}}
    rows = llamacpp_peer.ratios(results)
    by = {(r["what"], r["at"]): r for r in rows}
    assert set(by) == {("decode", "128"), ("prefill", "512"), ("prefill", "2048")}
    assert by["decode", "128"]["ratio"] == pytest.approx(0.5) and by["decode", "128"]["target"] == "<= 1"
    assert by["prefill", "2048"]["ratio"] == pytest.approx(2.0)
    assert by["prefill", "512"]["ratio"] == pytest.approx(602.4 / (512 / 1.7))
    assert all(r["mambakit"] == "int8" and r["llama.cpp"] == "q8_0" for r in rows)
    line = llamacpp_peer.ratio_lines([by["decode", "128"]])[0]
    assert line == "decode ctx=128: mambakit int8 vs llama.cpp q8_0: 0.50x ms/token ours/theirs (target <= 1)"


@pytest.mark.parametrize("text, reason", [("llama_model_load: error", "printed no JSON"),
                                          ("[]", "held no tests"),
                                          (json.dumps([{"n_prompt": 1, "n_gen": 0, "samples_ns": [0]}]),
                                           "without timings")])
def test_unusable_output_is_one_clear_reason(text, reason):
    with pytest.raises(llamacpp_peer.LlamaCppUnavailable, match=reason):
        llamacpp_peer.parse_llama_bench(text)


def test_a_failing_step_says_what_failed_in_one_line(tmp_path):
    with pytest.raises(llamacpp_peer.LlamaCppUnavailable) as e:
        llamacpp_peer._run([sys.executable, "-c", "import sys; sys.exit('no such model: x.gguf')"],
                           "llama-bench prefill", tmp_path / "log", timeout=60)
    assert "\n" not in str(e.value) and "llama-bench prefill failed (no such model: x.gguf)" in str(e.value)
