"""130M decode (and prefill), mambakit vs llama.cpp, interleaved: for a machine shared with other jobs
or whose clock drifts (boost), where two measurements minutes apart do not compare.

bench_lm.py runs each case in turn, so on a busy machine the load drifts between ours and the
peer's. Here both alternate within each round (llama.cpp's `llama-bench -p 0 -n N -d CONTEXT` in
a subprocess, then our decode of the same context in this process, for each precision pair
fp32/f32, bf16/f16, int8/q8_0), and the ratio is taken per round: its median holds when the
machine's speed does not. Same random weights as bench_lm (seed 0, our transformers export
converted by llama.cpp's own script); llama.cpp is built and cached by benchmarks/llamacpp_peer.py.

`--prefill L [L ...]` adds prompt processing, interleaved the same way: llama-bench `-p L -n 0`
against our `generation.prefill` of L tokens into a fresh cache (what generate() runs), as
tokens/s; the ratio per round is ours / theirs (target >= 2).

    python benchmarks/bench_decode_ab.py --threads 2 --rounds 3    # ~5 min after llama.cpp is built
    python benchmarks/bench_decode_ab.py --threads 2 --rounds 3 --prefill 512 2048
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


def ours_prefill(model, ids: torch.Tensor) -> float:
    """Tokens/s of one prefill of `ids` (1, L) into a fresh cache, last position's logits."""
    cache = model.allocate_cache(1)
    with torch.inference_mode():
        start = time.perf_counter()
        prefill(model, ids, cache)
        return ids.shape[1] / (time.perf_counter() - start)


def theirs_prefill(bin_dir: Path, gguf: Path, threads: int, length: int) -> float:
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(length),
                          "-n", "0", "-r", "2", "-o", "json"], capture_output=True, text=True, timeout=900,
                         check=True).stdout
    row = llamacpp_peer.parse_llama_bench(out)[0]
    return row["n_prompt"] / (row["median_ns"] / 1e9)


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
    ap.add_argument("--prefill", type=int, nargs="*", default=[], metavar="L",
                    help="also prompt processing of L tokens, interleaved (tokens/s)")
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
        tps = {(key, length): [] for pair in PAIRS for key in pair for length in args.prefill}
        prompts = {length: torch.randint(0, SIZE["vocab_size"], (1, length)) for length in args.prefill}
        for ids in prompts.values():  # warm-up at each length (kernel builds, first-touch pages)
            for fmt, _ in PAIRS:
                ours_prefill(runs[fmt][0], ids)
        for r in range(args.rounds):
            for fmt, kind in PAIRS:
                ms[kind].append(theirs(bin_dir, files[kind], args.threads, args.context, args.tokens))
                mine, runs[fmt][2] = ours(*runs[fmt], args.tokens)
                ms[fmt].append(mine)
                for length, ids in prompts.items():
                    tps[kind, length].append(theirs_prefill(bin_dir, files[kind], args.threads, length))
                    tps[fmt, length].append(ours_prefill(runs[fmt][0], ids))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in ms.items())
                  + "".join(f", prefill {k} L={n} {v[-1]:.0f} tok/s" for (k, n), v in tps.items()), flush=True)
    rows = []
    for fmt, kind in PAIRS:
        ratios = [a / b for a, b in zip(ms[fmt], ms[kind])]
        rows.append({"mambakit": fmt, "llama.cpp": kind, "mambakit_ms": statistics.median(ms[fmt]),
                     "llamacpp_ms": statistics.median(ms[kind]), "ratio_median": statistics.median(ratios),
                     "ratios": ratios})
        print(f"mambakit {fmt} {rows[-1]['mambakit_ms']:.2f} ms/token vs llama.cpp {kind} "
              f"{rows[-1]['llamacpp_ms']:.2f}: ratio {rows[-1]['ratio_median']:.2f} (target <= 1)")
    prefill_rows = []
    for length in args.prefill:
        for fmt, kind in PAIRS:
            ratios = [a / b for a, b in zip(tps[fmt, length], tps[kind, length])]
            prefill_rows.append({"length": length, "mambakit": fmt, "llama.cpp": kind,
                                 "mambakit_tokens_per_s": statistics.median(tps[fmt, length]),
                                 "llamacpp_tokens_per_s": statistics.median(tps[kind, length]),
                                 "ratio_median": statistics.median(ratios), "ratios": ratios})
            row = prefill_rows[-1]
            print(f"prefill L={length}: mambakit {fmt} {row['mambakit_tokens_per_s']:.0f} tok/s vs llama.cpp "
                  f"{kind} {row['llamacpp_tokens_per_s']:.0f}: ratio {row['ratio_median']:.2f} (target >= 2)")
    out = Path(__file__).parent / "results" / "decode_ab.json"
    out.write_text(json.dumps({"threads": args.threads, "context": args.context, "tokens": args.tokens,
                               "load_average": list(os.getloadavg()), "rows": rows,
                               "prefill": prefill_rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
