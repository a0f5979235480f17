"""Mamba-2 130M shape on CPU (d_model 768, 24 layers, d_state 128, headdim 64): prefill tok/s at
L=2048, decode ms/token at context 128 and 8192, training step B=1 L=512 — side by side in one run
with transformers' Mamba2ForCausalLM (its PyTorch path; mamba_ssm is not installed) and with our
Mamba-1 of the same width and depth. The headline figures run the library's own CPU chunk
(ops/ssd_cpu.CPU_CHUNK_SIZE: what a user gets); sweeps over chunk sizes (through bench_lm's
`ssd_cpu_chunk`) for prefill and for the training step are reported beside them, to check that
choice by measurement. The config's chunk_size is the GPU kernels' tile and leaves the CPU path
unchanged.

Reuses bench_lm.py's cases: each measurement runs in its own subprocess (peak RSS per case),
medians of several runs. The machine may be shared: compare ratios within one run only.

    python benchmarks/bench_mamba2.py            # full (many minutes)
    python benchmarks/bench_mamba2.py --quick    # small model, a smoke test of the script
    OMP_NUM_THREADS=1 python benchmarks/bench_mamba2.py ...   # on a machine shared with busy
        processes: two threads then mostly wait for each other at every op's barrier
Writes benchmarks/results/mamba2.json and mamba2.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_lm import RESULTS, plot, run_case  # noqa: E402

CHUNKS = (32, 64, 128)


def _default_chunk() -> int:
    from mambakit.ops.ssd_cpu import CPU_CHUNK_SIZE

    return CPU_CHUNK_SIZE


def case(name: str, **kwargs) -> dict:
    """bench_lm's run_case, printing each result as it comes (a long run keeps what it measured)."""
    result = run_case(name, **kwargs)
    print(f"    {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS), help="chunk sizes to sweep")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case (medians)")
    args = ap.parse_args()
    size = (dict(d_model=128, n_layer=2, vocab_size=512) if args.quick
            else dict(d_model=768, n_layer=24, vocab_size=50280))
    prefill_len = 256 if args.quick else 2048
    contexts = [16, 128] if args.quick else [128, 8192]
    train_len = 64 if args.quick else 512
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_avg_at_start": os.getloadavg()[0],
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}, "repeats": args.repeats,
               "model": size, "chunk_sweep": {}, "prefill": {}, "decode": {}, "train": {}}

    default = _default_chunk()
    chunks = sorted(set(args.chunks) | {default})          # the library's chunk is always measured
    for chunk in chunks:
        print(f"[mambakit-mamba2] chunk_size={chunk} prefill L={prefill_len} ...", flush=True)
        results["chunk_sweep"][str(chunk)] = case("prefill", impl="mambakit-mamba2",
                                                      size={**size, "ssd_cpu_chunk": chunk},
                                                      length=prefill_len, repeats=args.repeats)
    best = max(chunks, key=lambda c: results["chunk_sweep"][str(c)].get("tokens_per_s", 0))
    results["chunk_size"], results["best_prefill_chunk_in_sweep"] = default, best
    print(f"library chunk {default}; fastest prefill chunk in this sweep: {best}", flush=True)

    sizes = {"mambakit-mamba2": size, "transformers-mamba2": size, "mambakit": size}
    # Cheapest and most telling first (prefill, then short-context decode, long-context decode,
    # training), so that a run cut short on a busy machine keeps the comparisons that matter most.
    results["prefill"]["mambakit-mamba2"] = results["chunk_sweep"][str(default)]
    for impl in ("transformers-mamba2", "mambakit"):
        print(f"[{impl}] prefill L={prefill_len} ...", flush=True)
        results["prefill"][impl] = case("prefill", impl=impl, size=sizes[impl], length=prefill_len,
                                        repeats=args.repeats)
    # Ours at both contexts in one process, steps interleaved (bench_lm.case_decode_contexts: two
    # subprocesses minutes apart drift more than the 10% the flatness target allows); the peers at
    # the short context only: their decode is flat in context (one recurrent step) and their 8K
    # prefill takes minutes.
    print(f"[mambakit-mamba2] decode contexts={contexts} (interleaved) ...", flush=True)
    paired = case("decode_contexts", impl="mambakit-mamba2", size=size, contexts=contexts, n_tokens=24)
    if "ms_per_token" in paired:
        results["decode"]["mambakit-mamba2"] = {c: {"ms_per_token": ms} for c, ms in paired["ms_per_token"].items()}
        results["decode_interleaved"] = paired
    for impl in ("transformers-mamba2", "mambakit"):
        print(f"[{impl}] decode context={contexts[0]} ...", flush=True)
        results["decode"].setdefault(impl, {})[str(contexts[0])] = case(
            "decode", impl=impl, size=sizes[impl], context=contexts[0], n_tokens=12)
    # Training has its own chunk sweep: its backward redoes the (Q x Q) work, so a smaller chunk
    # than prefill's may win; the step is reported at the library's chunk, the sweep beside it.
    results["train_chunk_sweep"] = {}
    for chunk in chunks:
        print(f"[mambakit-mamba2] chunk_size={chunk} train step L={train_len} ...", flush=True)
        results["train_chunk_sweep"][str(chunk)] = case("train", impl="mambakit-mamba2",
                                                        size={**size, "ssd_cpu_chunk": chunk},
                                                        length=train_len, repeats=args.repeats)
    train_best = min(chunks, key=lambda c: results["train_chunk_sweep"][str(c)].get("seconds", float("inf")))
    results["best_train_chunk_in_sweep"] = train_best
    print(f"fastest training chunk in this sweep: {train_best}", flush=True)
    results["train"]["mambakit-mamba2"] = results["train_chunk_sweep"][str(default)]
    for impl in ("mambakit", "transformers-mamba2"):
        print(f"[{impl}] train step L={train_len} ...", flush=True)
        results["train"][impl] = case("train", impl=impl, size=sizes[impl], length=train_len,
                                      repeats=args.repeats)

    results["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    p = results["prefill"]
    tps = {k: v.get("tokens_per_s") for k, v in p.items()}
    if all(tps.values()):
        results["ratios"] = {
            "prefill_vs_transformers_mamba2": tps["mambakit-mamba2"] / tps["transformers-mamba2"],
            "prefill_vs_our_mamba1": tps["mambakit-mamba2"] / tps["mambakit"]}
    dec = results["decode"].get("mambakit-mamba2", {})
    if all("ms_per_token" in dec.get(str(c), {}) for c in contexts):
        # the median of per-step ratios of the interleaved run (each pair of steps ran back to back)
        results["ratios"]["decode_long_over_short"] = \
            results["decode_interleaved"][f"per_step_ratio_to_{contexts[0]}"][str(contexts[-1])]
    tr = results["train"]
    if all("seconds" in tr.get(k, {}) for k in ("mambakit-mamba2", "mambakit")):
        results["ratios"]["train_step_vs_our_mamba1"] = tr["mambakit-mamba2"]["seconds"] / tr["mambakit"]["seconds"]

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("mamba2_quick.json" if args.quick else "mamba2.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    # bench_lm's plot takes prefill per prompt length and a batched-decode panel (not run here)
    plot({**results, "prefill": {k: {str(prefill_len): v} for k, v in results["prefill"].items()},
          "batched": {}}, out.with_suffix(".png"))
    print(json.dumps(results, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
