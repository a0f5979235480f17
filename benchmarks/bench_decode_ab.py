"""130M single-token decode, mambakit vs llama.cpp, interleaved: for a machine shared with other jobs.

bench_lm.py runs each case in turn, so on a busy machine the load drifts between ours and the
peer's. Here both alternate within each round (llama.cpp's `llama-bench -p 0 -n N -d CONTEXT` in
a subprocess, then our decode of the same context in this process, for each precision pair
fp32/f32, bf16/f16, int8/q8_0), and the ratio is taken per round: its median holds when the
machine's speed does not. Same random weights as bench_lm (seed 0, our transformers export
converted by llama.cpp's own script); llama.cpp is built and cached by benchmarks/llamacpp_peer.py.

    python benchmarks/bench_decode_ab.py --threads 2 --rounds 3    # ~5 min after llama.cpp is built
Writes benchmarks/results/decode_ab.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mambakit  # noqa: F401  (before torch: passive OpenMP waiting on a busy machine)

# isort: split
import torch

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp_peer  # noqa: E402

from mambakit import MambaConfig, MambaLM, quantize  # noqa: E402
from mambakit.generation import prefill  # noqa: E402

PAIRS = [("fp32", "f32"), ("bf16", "f16"), ("int8", "q8_0")]
SIZE = dict(d_model=768, n_layer=24, vocab_size=50280)


def ours(model, cache, token, n_tokens: int) -> tuple[float, torch.Tensor]:
    """Median ms of `n_tokens` decode steps (the first two skipped) and the last token."""
    times = []
    with torch.inference_mode():
        for _ in range(n_tokens):
            start = time.perf_counter()
            token = model.step(token, cache).argmax(-1)
            times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3, token


def theirs(bin_dir: Path, gguf: Path, threads: int, context: int, n_tokens: int) -> float:
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", "0",
                          "-n", str(n_tokens), "-d", str(context), "-r", "2", "-o", "json"],
                         capture_output=True, text=True, timeout=900, check=True).stdout
    row = llamacpp_peer.parse_llama_bench(out)[0]
    return row["median_ns"] / 1e6 / row["n_gen"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = llamacpp_peer.cache_dir()
    bin_dir = llamacpp_peer.build(root)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        MambaLM(MambaConfig(**SIZE)).save_pretrained(Path(tmp) / "hf", format="transformers")
        files = llamacpp_peer.convert(Path(tmp) / "hf", Path(tmp), root, bin_dir)
        runs = {}
        for fmt, _ in PAIRS:
            torch.manual_seed(0)
            model = quantize(MambaLM(MambaConfig(**SIZE)).eval(), fmt)
            cache = model.allocate_cache(1)
            with torch.inference_mode():
                token = prefill(model, torch.randint(0, SIZE["vocab_size"], (1, args.context)), cache).argmax(-1)
            runs[fmt] = [model, cache, token]
        ms = {key: [] for pair in PAIRS for key in pair}
        for r in range(args.rounds):
            for fmt, kind in PAIRS:
                ms[kind].append(theirs(bin_dir, files[kind], args.threads, args.context, args.tokens))
                mine, runs[fmt][2] = ours(*runs[fmt], args.tokens)
                ms[fmt].append(mine)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in ms.items()), flush=True)
    rows = []
    for fmt, kind in PAIRS:
        ratios = [a / b for a, b in zip(ms[fmt], ms[kind])]
        rows.append({"mambakit": fmt, "llama.cpp": kind, "mambakit_ms": statistics.median(ms[fmt]),
                     "llamacpp_ms": statistics.median(ms[kind]), "ratio_median": statistics.median(ratios),
                     "ratios": ratios})
        print(f"mambakit {fmt} {rows[-1]['mambakit_ms']:.2f} ms/token vs llama.cpp {kind} "
              f"{rows[-1]['llamacpp_ms']:.2f}: ratio {rows[-1]['ratio_median']:.2f} (target <= 1)")
    out = Path(__file__).parent / "results" / "decode_ab.json"
    out.write_text(json.dumps({"threads": args.threads, "context": args.context, "tokens": args.tokens,
                               "load_average": list(os.getloadavg()), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
