"""`mambakit serve` under load: a 130M-shape Mamba (d768, 24 layers, vocab 50280, random weights)
behind the real HTTP server, driven by the official openai client with streaming requests.

Measures
- aggregate tokens/s and p50 / p99 inter-token latency with 1, 4 and 16 concurrent streams;
- time to first token for a 4096-token prefix + a 32-token question, cold (nothing cached: what a
  server without a prompt-state cache, like llama.cpp's for Mamba, does every time) and cached
  (the same prefix, another question: only the question is prefilled), interleaved per prefix;
- memory per cached prefix: bytes per stored state (the state cache's own accounting) for a
  512-token and a 4096-token prompt, and how many states one prompt stores.

The server runs in its own process (so client and server don't share a GIL); prompts are random
token ids through a one-character-per-token tokenizer, so each streamed chunk is one token.

    python benchmarks/bench_serve.py            # full: about 3-5 minutes on 2 idle cores
    python benchmarks/bench_serve.py --quick    # tiny model, ~30 s: a smoke test of the script
Writes benchmarks/results/serve.json and serve.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mambakit  # noqa: F401 - before torch loads: OpenMP then waits passively (mambakit/threads.py)

RESULTS = Path(__file__).parent / "results"
FULL = dict(d_model=768, n_layer=24, vocab_size=50280)
QUICK = dict(d_model=64, n_layer=2, vocab_size=512)


class IdTokenizer:
    """Token id i <-> the character U+0100 + i: every sampled token is visible text (a random
    model's ids would otherwise mostly decode to nothing), so a streamed chunk is one token."""

    kind = "ids"
    eos_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x100 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(0x100 + int(i)) for i in ids)


def server(port: int, size: dict, max_batch: int, threads: int) -> None:
    """The server process: random weights, the engine, the app, uvicorn."""
    import torch

    from mambakit import MambaConfig, MambaLM
    from mambakit.serve.app import create_app
    from mambakit.serve.engine import Engine
    from mambakit.serve.run import serve_forever

    if threads:
        torch.set_num_threads(threads)

    torch.manual_seed(0)
    model = MambaLM(MambaConfig(**size))
    engine = Engine(model, IdTokenizer(size["vocab_size"]), max_batch=max_batch, max_queue=256,
                    prefill_chunk=256, state_cache_mb=1024).start()
    serve_forever(create_app(engine, "bench", max_prompt_tokens=16384), "127.0.0.1", port, log_level="warning")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            get_json(url + "/health")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up within {timeout} s") from None
            time.sleep(0.5)


async def one_stream(client, prompt: str, max_tokens: int) -> dict:
    """Stream one completion; chunk arrival times and the server's usage counts."""
    start = time.perf_counter()
    times, usage = [], None
    stream = await client.completions.create(
        model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    return {"start": start, "times": times, "tokens": usage.completion_tokens,
            "cached": usage.prompt_tokens_details.cached_tokens, "prompt_tokens": usage.prompt_tokens}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def concurrency(client, tok: IdTokenizer, rng: random.Random, clients: int, max_tokens: int,
                      repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        prompts = [tok.decode(rng.randrange(tok.vocab_size) for _ in range(16)) for _ in range(clients)]
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(one_stream(client, p, max_tokens) for p in prompts))
        wall = time.perf_counter() - t0
        gaps = [b - a for s in streams for a, b in zip(s["times"], s["times"][1:])]
        runs.append({"tokens_per_s": sum(s["tokens"] for s in streams) / wall,
                     "itl_p50_ms": 1000 * percentile(gaps, 50), "itl_p99_ms": 1000 * percentile(gaps, 99),
                     "ttft_p50_ms": 1000 * statistics.median(s["times"][0] - s["start"] for s in streams)})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


async def prefix_ttft(client, tok: IdTokenizer, rng: random.Random, prefix_len: int, question_len: int,
                      repeats: int) -> dict:
    """Per fresh prefix: cold (prefix + q1), then cached (prefix + q2) — interleaved A/B."""
    cold, cached, hits = [], [], []
    for _ in range(repeats):
        prefix = tok.decode(rng.randrange(tok.vocab_size) for _ in range(prefix_len))
        q1, q2 = (tok.decode(rng.randrange(tok.vocab_size) for _ in range(question_len)) for _ in range(2))
        a = await one_stream(client, prefix + q1, 2)
        b = await one_stream(client, prefix + q2, 2)
        cold.append(a["times"][0] - a["start"])
        cached.append(b["times"][0] - b["start"])
        hits.append(b["cached"])
    c, h = statistics.median(cold), statistics.median(cached)
    return {"prefix_tokens": prefix_len, "question_tokens": question_len, "cold_ttft_ms": 1000 * c,
            "cached_ttft_ms": 1000 * h, "speedup": c / h, "cached_tokens": hits,
            "cold_runs_ms": [1000 * x for x in cold], "cached_runs_ms": [1000 * x for x in cached]}


async def state_memory(client, url: str, tok: IdTokenizer, rng: random.Random) -> dict:
    """Bytes per cached state after prompts of 512 and 4096 tokens, from the server's accounting."""
    out = {"state_bytes_per_sequence": get_json(url + "/health")["state_bytes_per_sequence"]}
    for length in (512, 4096):
        before = get_json(url + "/health")
        await one_stream(client, tok.decode(rng.randrange(tok.vocab_size) for _ in range(length)), 1)
        deadline = time.monotonic() + 60        # the finished row's state is stored at the next step
        while get_json(url + "/health")["live_states"] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = get_json(url + "/health")
        entries = after["state_cache_entries"] - before["state_cache_entries"]
        out[str(length)] = {"states_stored": entries,
                            "bytes_per_state": (after["state_cache_bytes"] - before["state_cache_bytes"]) / entries}
    return out


async def drive(url: str, size: dict, quick: bool) -> dict:
    import openai

    tok, rng = IdTokenizer(size["vocab_size"]), random.Random(0)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)
    try:
        await one_stream(client, tok.decode(range(8)), 4)                    # warm-up
        max_tokens, repeats = (16, 1) if quick else (48, 2)
        results = {"concurrency": {}}
        for clients in (1, 4, 16):
            print(f"{clients} concurrent stream(s) x {max_tokens} tokens ...", flush=True)
            results["concurrency"][str(clients)] = await concurrency(client, tok, rng, clients, max_tokens, repeats)
        prefix_len = 512 if quick else 4096
        print(f"time to first token, {prefix_len}-token prefix + 32-token question, cold vs cached ...", flush=True)
        results["prefix"] = await prefix_ttft(client, tok, rng, prefix_len, 32, 2 if quick else 3)
        print("memory per cached prefix ...", flush=True)
        results["memory"] = await state_memory(client, url, tok, rng)
        return results
    finally:
        await client.close()


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    ax, bx, cx = fig.subplots(1, 3)
    conc = results["concurrency"]
    n = [int(k) for k in conc]
    ax.plot(n, [conc[str(k)]["tokens_per_s"] for k in n], "o-")
    ax.set_title("aggregate tokens/s (higher is better)")
    for key, style in (("itl_p50_ms", "o-"), ("itl_p99_ms", "s--")):
        bx.plot(n, [conc[str(k)][key] for k in n], style, label=key.replace("itl_", "").replace("_ms", ""))
    bx.set_title("inter-token latency ms")
    bx.legend(fontsize=8)
    for axis in (ax, bx):
        axis.set_xscale("log", base=2)
        axis.set_xticks(n, [str(k) for k in n])
        axis.set_xlabel("concurrent streams")
        axis.set_ylim(bottom=0)
    p = results["prefix"]
    cx.bar(["cold", "cached"], [p["cold_ttft_ms"], p["cached_ttft_ms"]], color=["tab:gray", "tab:blue"])
    cx.set_yscale("log")
    for i, v in enumerate((p["cold_ttft_ms"], p["cached_ttft_ms"])):
        cx.annotate(f"{v:.0f} ms", (i, v), ha="center", va="bottom", fontsize=8)
    cx.set_title(f"TTFT, {p['prefix_tokens']}-token prefix + {p['question_tokens']} ({p['speedup']:.0f}x)")
    m = results["model"]
    load = results["machine"].get("load_average_before", [0])[0]
    fig.suptitle(f"mambakit serve: Mamba d_model={m['d_model']} n_layer={m['n_layer']}, random weights, fp32, "
                 f"{results['machine']['cores']} cores at load average {load:.0f}, "
                 f"{results['server']['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--plot-only", action="store_true", help="redraw serve.png from serve.json")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the server (default: torch's, one per core)")
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    if args.server:
        return server(args.server, size, max_batch=16, threads=args.threads)
    if args.plot_only:
        return plot(json.loads((RESULTS / "serve.json").read_text()), RESULTS / "serve.png")

    from mambakit.serve.run import free_port

    port = free_port()
    cmd = [sys.executable, __file__, "--server", str(port), "--threads", str(args.threads)] + \
        (["--quick"] if args.quick else [])
    proc = subprocess.Popen(cmd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc)
        started = time.perf_counter()
        results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "load_average_before": os.getloadavg()},
                   "model": size, "server": {"max_batch": 16, "prefill_chunk": 256, "dtype": "fp32",
                                             "threads": args.threads or "torch default"}}
        results.update(asyncio.run(drive(url, size, args.quick)))
        results["seconds"] = time.perf_counter() - started
        results["machine"]["load_average_after"] = os.getloadavg()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("serve_quick.json" if args.quick else "serve.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in results.items() if k != "concurrency"}, indent=2))
    for k, v in results["concurrency"].items():
        print(f"{k:>3} streams: {v['tokens_per_s']:.1f} tok/s, ITL p50 {v['itl_p50_ms']:.1f} ms, "
              f"p99 {v['itl_p99_ms']:.1f} ms")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
