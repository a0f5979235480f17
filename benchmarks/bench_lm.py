"""End-to-end 130M-class Mamba on CPU: prefill tok/s, decode ms/token vs context, batched decode
tokens/s, training step — mambakit at fp32 / bf16 / int8 weights (mambakit.quantize).

Peers in the same run: transformers' MambaForCausalLM (its CPU path, fp32) and mambapy's LM (its
parallel scan), same shapes, random weights; with --with-llamacpp also llama.cpp at f32 / f16 /
q8_0 (built once from the llama-cpp-python sdist and cached: benchmarks/llamacpp_peer.py), running the
same random weights converted from our transformers-format export.
Each measurement runs in its own subprocess so peak RSS is per case. Medians of several runs.

    python benchmarks/bench_lm.py            # full (~15 min on an idle 2-core machine)
    python benchmarks/bench_lm.py --quick    # small model, seconds: a smoke test of the script
    python benchmarks/bench_lm.py --with-llamacpp   # + llama.cpp (first run: ~30 min to compile)
Writes benchmarks/results/lm.json and lm.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llamacpp_peer  # benchmarks/ (this script's folder) is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for hub kernels
RESULTS = Path(__file__).parent / "results"


def _median_time(fn, repeats: int) -> float:
    """Median of `repeats` timed calls (each case warms up itself)."""
    from mambakit.perf import median_seconds

    return median_seconds(fn, repeats, warmup=0)


def _ours(size: dict):
    import torch

    from mambakit import MambaConfig, MambaLM

    torch.manual_seed(0)
    return MambaLM(MambaConfig(**size))


def _hf(size: dict):
    import torch
    from transformers import MambaConfig as HFConfig
    from transformers import MambaForCausalLM

    torch.manual_seed(0)
    cfg = HFConfig(vocab_size=size["vocab_size"], hidden_size=size["d_model"],
                   num_hidden_layers=size["n_layer"], state_size=16, expand=2, conv_kernel=4)
    return MambaForCausalLM(cfg)


def _mambapy(size: dict):
    """mambapy's Mamba stack (pscan) with an embedding, final RMSNorm and tied head, as in its
    `lm.LM` — which itself can't be imported without mamba_ssm (its Mamba-2 module needs it)."""
    import torch
    from mambapy.mamba import Mamba, RMSNorm
    from mambapy.mamba import MambaConfig as PyConfig
    from torch import nn

    class PyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(size["vocab_size"], size["d_model"])
            self.mamba = Mamba(PyConfig(d_model=size["d_model"], n_layers=size["n_layer"]))
            self.norm_f = RMSNorm(size["d_model"])
            self.lm_head = nn.Linear(size["d_model"], size["vocab_size"], bias=False)
            self.lm_head.weight = self.embedding.weight

        def forward(self, ids):
            return self.lm_head(self.norm_f(self.mamba(self.embedding(ids))))

    torch.manual_seed(0)
    return PyLM()


def _ours_mamba2(size: dict):
    """`ssd_cpu_chunk` in size (not a config field) sets the CPU SSD backend's own chunk size, the
    one that matters on CPU (the config's chunk_size is the GPU kernels' tile; see ops/ssd_cpu.py)."""
    import torch

    from mambakit import Mamba2Config, Mamba2LM
    from mambakit.ops import ssd_cpu

    size = dict(size)
    if "ssd_cpu_chunk" in size:
        ssd_cpu.CPU_CHUNK_SIZE = size.pop("ssd_cpu_chunk")
    torch.manual_seed(0)
    return Mamba2LM(Mamba2Config(**size))


def _hf_mamba2(size: dict):
    """transformers' Mamba2ForCausalLM; without mamba_ssm installed it runs its PyTorch path."""
    import torch
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM

    torch.manual_seed(0)
    d_inner = 2 * size["d_model"]
    cfg = HFConfig(vocab_size=size["vocab_size"], hidden_size=size["d_model"],
                   num_hidden_layers=size["n_layer"], state_size=128, head_dim=64, num_heads=d_inner // 64,
                   n_groups=1, expand=2, conv_kernel=4, chunk_size=size.get("chunk_size", 256),
                   tie_word_embeddings=True)
    return Mamba2ForCausalLM(cfg)


BUILD = {"mambakit": _ours, "transformers": _hf, "mambapy": _mambapy,
         "mambakit-mamba2": _ours_mamba2, "transformers-mamba2": _hf_mamba2}


# ---- worker cases (run in a subprocess) ----------------------------------------------------
PRECISIONS = ("fp32", "bf16", "int8")  # mambakit's weight formats (mambakit.quantize)


def _model(impl: str, size: dict, precision: str):
    """`impl` in `precision`: mambakit packs its Linear weights (fp32 too: the decode GEMV);
    the peers run as they ship (fp32)."""
    model = BUILD[impl](size).eval()
    if impl.startswith("mambakit"):
        from mambakit import quantize

        quantize(model, precision)
    return model


def case_prefill(impl: str, size: dict, length: int, repeats: int, precision: str = "fp32") -> dict:
    """Tokens/s of one forward over a (1, length) prompt, last position's logits only (what
    generation's prefill needs; transformers takes the same logits_to_keep=1)."""
    import torch

    model = _model(impl, size, precision)
    ids = torch.randint(0, size["vocab_size"], (1, length))
    kwargs = {} if impl == "mambapy" else {"logits_to_keep": 1}
    with torch.inference_mode():
        model(ids[:, :64], **kwargs)  # warm-up (and JIT compile of the fused kernels)
        t = _median_time(lambda: model(ids, **kwargs), repeats)
    return {"seconds": t, "tokens_per_s": length / t}


def case_decode(impl: str, size: dict, context: int, n_tokens: int, precision: str = "fp32",
                batch: int = 1) -> dict:
    """ms per decode step of `batch` rows after prefilling `context` tokens; tokens/s = batch / step."""
    import torch

    model = _model(impl, size, precision)
    ids = torch.randint(0, size["vocab_size"], (batch, context))
    with torch.inference_mode():
        if impl.startswith("mambakit"):
            from mambakit.generation import prefill

            cache = model.allocate_cache(batch)
            logits = prefill(model, ids, cache)  # chunked, as generate() does
            token = logits.argmax(-1)
            per_token = []
            for _ in range(n_tokens):
                t0 = time.perf_counter()
                token = model.step(token, cache).argmax(-1)
                per_token.append(time.perf_counter() - t0)
            ms = statistics.median(per_token[2:]) * 1e3
        else:
            def run(n):
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            run(2)
            t_short = _median_time(lambda: run(1), 2)
            t_long = _median_time(lambda: run(n_tokens + 1), 2)
            ms = (t_long - t_short) / n_tokens * 1e3
    return {"ms_per_token": ms, "tokens_per_s": batch / ms * 1e3}


def case_decode_contexts(impl: str, size: dict, contexts: list, n_tokens: int, precision: str = "fp32") -> dict:
    """Decode ms per step after each of `contexts`, in one process: one cache prefilled per context,
    then steps taken in turn from each (A B A B ...), so a context's figure and the ratio between
    them see the same machine state. Separate runs minutes apart on a shared machine drift by
    10-20% (clock boost, the other core's memory traffic; a decode step streams every weight),
    which hid a flat decode: a 128-vs-8192 pair that read 1.12x from two subprocesses read
    0.99x interleaved (130M shape, 1 thread). mambakit models only (the recurrent cache)."""
    import torch

    from mambakit.generation import prefill

    model = _model(impl, size, precision)
    caches, tokens, per = {}, {}, {c: [] for c in contexts}
    with torch.inference_mode():
        for ctx in contexts:
            caches[ctx] = model.allocate_cache(1)
            ids = torch.randint(0, size["vocab_size"], (1, ctx))
            tokens[ctx] = prefill(model, ids, caches[ctx]).argmax(-1)  # chunked, as generate() does
        for _ in range(n_tokens):
            for ctx in contexts:
                t0 = time.perf_counter()
                tokens[ctx] = model.step(tokens[ctx], caches[ctx]).argmax(-1)
                per[ctx].append(time.perf_counter() - t0)
    ms = {str(c): statistics.median(per[c][2:]) * 1e3 for c in contexts}
    first = contexts[0]
    ratios = {str(c): statistics.median(b / a for a, b in zip(per[first][2:], per[c][2:])) for c in contexts[1:]}
    return {"ms_per_token": ms, f"per_step_ratio_to_{first}": ratios}


def case_train(impl: str, size: dict, length: int, repeats: int, grad_checkpoint: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    model = BUILD[impl](size).train()
    if grad_checkpoint:
        model.gradient_checkpointing = True  # mambakit's `train --grad-checkpoint`
    if impl.startswith("mambakit"):  # what `mambakit train` uses: fused AdamW, no decay on norms/A_log/D
        from mambakit.train.schedule import build_optimizer

        opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, size["vocab_size"], (1, length + 1))

    def step():
        if impl.startswith("mambakit"):  # what `mambakit train` does: the LM head's chunked loss
            loss = model(ids[:, :-1], targets=ids[:, 1:])
        else:
            out = model(ids[:, :-1])
            logits = out if isinstance(out, torch.Tensor) else out.logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # free the grads before the next forward, as a trainer does

    step()
    return {"seconds": _median_time(step, repeats)}


def add_llamacpp(results: dict, size: dict, lengths: list[int], contexts: list[int]) -> None:
    """llama.cpp's rows beside ours (labels "llama.cpp f32|f16|q8_0") and the ratios to them in
    results["llamacpp"]; when it can't be built or run, the reason in one line and no rows."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mambakit-llamacpp-") as tmp:
        _ours(size).save_pretrained(Path(tmp) / "hf", format="transformers")  # the same seed-0 weights
        try:
            peer = llamacpp_peer.run_peer(Path(tmp) / "hf", Path(tmp), threads=os.cpu_count() or 1,
                                     lengths=lengths, contexts=contexts)
        except llamacpp_peer.LlamaCppUnavailable as e:
            print(f"[llama.cpp] left out: {e}", flush=True)
            results["llamacpp"] = {"version": llamacpp_peer.VERSION, "error": str(e)}
            return
    for label, cases in peer.items():
        results["prefill"][label] = cases["prefill"]
        results["decode"][label] = cases["decode"]
    results["llamacpp"] = {"version": llamacpp_peer.VERSION, "threads": os.cpu_count(),
                           "vs_mambakit": llamacpp_peer.ratios(results)}


CASES = {"prefill": case_prefill, "decode": case_decode, "decode_contexts": case_decode_contexts,
         "train": case_train}


def run_case(name: str, **kwargs) -> dict:
    """Run one case in a fresh interpreter; return its result plus peak RSS in MB."""
    cmd = [sys.executable, __file__, "--worker", json.dumps({"case": name, **kwargs})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(spec: str) -> None:
    kwargs = json.loads(spec)
    result = CASES[kwargs.pop("case")](**kwargs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def plot(results: dict, path: Path) -> None:
    """Four panels: prefill tokens/s per length, decode ms/token per context, batched-decode
    tokens/s per batch size (each line one implementation and precision), training-step seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    panels = [("prefill", "tokens_per_s", "prefill tokens/s, last-position logits (higher is better)", "prompt length"),
              ("decode", "ms_per_token", "decode ms/token, batch 1 (lower is better)", "context length"),
              ("batched", "tokens_per_s", "batched decode tokens/s (higher is better)", "batch size")]
    for axis, (key, field, title, xlabel) in zip(axes, panels):
        for label, per_x in results[key].items():
            xs = sorted(per_x, key=int)
            axis.plot([int(x) for x in xs], [per_x[x].get(field, float("nan")) for x in xs], "o-", label=label)
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.set_xlabel(xlabel)
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=7)
    names = [n for n in results["train"] if "seconds" in results["train"][n]]
    axes[3].bar(names, [results["train"][n]["seconds"] for n in names])
    axes[3].set_title("training step s, fp32 (lower is better)", fontsize=9)
    fig.suptitle(f"Mamba d_model={results['model']['d_model']} n_layer={results['model']['n_layer']}, "
                 f"{results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    """The issue's table: one row per implementation and precision; decode as a ratio to
    transformers fp32 at the shortest context (its decode is flat in context)."""
    hf_runs = results["decode"].get("transformers fp32", {})
    hf_ms = hf_runs.get(results["contexts"][0], {}).get("ms_per_token")
    lines = ["| impl | prefill tok/s (L=" + " / ".join(results["lengths"]) + ") | decode ms/token (ctx "
             + " / ".join(results["contexts"]) + ") | decode vs transformers | batched tok/s (B="
             + " / ".join(results["batches"]) + ") |", "|---|---|---|---|---|"]
    def cell(per_x, keys, field, fmt):
        return " / ".join(fmt.format(per_x[k][field]) if field in per_x.get(k, {}) else "—" for k in keys)
    for label in dict.fromkeys([*results["prefill"], *results["decode"], *results["batched"]]):
        dec = results["decode"].get(label, {})
        ratio = [f"{dec[c]['ms_per_token'] / hf_ms:.2f}x" for c in results["contexts"]
                 if "ms_per_token" in dec.get(c, {}) and hf_ms]
        lines.append(f"| {label} | {cell(results['prefill'].get(label, {}), results['lengths'], 'tokens_per_s', '{:.0f}')} "
                     f"| {cell(dec, results['contexts'], 'ms_per_token', '{:.1f}')} | {' / '.join(ratio) or '—'} "
                     f"| {cell(results['batched'].get(label, {}), results['batches'], 'tokens_per_s', '{:.0f}')} |")
    train = results["train"]
    lines.append("")
    lines.extend(f"training step B=1 L={results['train_length']} {n}: {r['seconds']:.2f} s, peak RSS "
                 f"{r['peak_rss_mb']:.0f} MB" for n, r in train.items() if "seconds" in r)
    peer = results.get("llamacpp", {})
    if "error" in peer:
        lines.append(f"llama.cpp: left out ({peer['error']})")
    if peer.get("vs_mambakit"):
        lines.extend(["", f"vs llama.cpp (llama-cpp-python {peer['version']} sdist, -t {peer['threads']}):",
                      *llamacpp_peer.ratio_lines(peer["vs_mambakit"])])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--plot-only", action="store_true", help="redraw lm.png from lm.json")
    ap.add_argument("--impls", default="mambakit,transformers,mambapy",
                    help=f"comma-separated subset of {','.join(BUILD)}")
    ap.add_argument("--with-llamacpp", action="store_true",
                    help="add llama.cpp f32/f16/q8_0 as a peer (built once into ~/.cache/mambakit/llamacpp)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="mambakit weight formats to measure (default: fp32,bf16,int8)")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.plot_only:
        return plot(json.loads((RESULTS / "lm.json").read_text()), RESULTS / "lm.png")

    size = (dict(d_model=128, n_layer=2, vocab_size=512) if args.quick
            else dict(d_model=768, n_layer=24, vocab_size=50280))
    lengths = [64, 256] if args.quick else [512, 2048]
    contexts = [16, 128] if args.quick else [128, 4096]
    batches = [1, 8, 32]
    train_len = 64 if args.quick else 512
    impls = [i for i in args.impls.split(",") if i]
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = [i for i in impls if i not in BUILD] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        ap.error(f"unknown implementation(s) or precision(s) {unknown}; choose from {sorted(BUILD)} "
                 f"and {list(PRECISIONS)}")
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
               "model": size, "lengths": [str(x) for x in lengths], "contexts": [str(x) for x in contexts],
               "batches": [str(x) for x in batches], "train_length": train_len,
               "prefill": {}, "decode": {}, "batched": {}, "train": {}}
    for impl in impls:
        ours = impl.startswith("mambakit")
        for precision in (precisions if ours else ["fp32"]):
            label = f"{impl} {precision}"
            for length in lengths:
                print(f"[{label}] prefill L={length} ...", flush=True)
                results["prefill"].setdefault(label, {})[str(length)] = run_case(
                    "prefill", impl=impl, size=size, length=length, repeats=3 if ours else 1,
                    precision=precision)
            if impl == "mambapy":
                continue  # mambapy decodes by re-running its step over the whole prompt; not a peer here
            for ctx in contexts:
                if impl == "transformers" and ctx > 1024:
                    continue  # HF's decode is flat in context; prefilling 4K on its CPU path takes minutes
                print(f"[{label}] decode context={ctx} ...", flush=True)
                results["decode"].setdefault(label, {})[str(ctx)] = run_case(
                    "decode", impl=impl, size=size, context=ctx, n_tokens=20, precision=precision)
            for batch in batches if ours else []:  # transformers' batched generate: not a like-for-like step
                print(f"[{label}] batched decode B={batch} ...", flush=True)
                results["batched"].setdefault(label, {})[str(batch)] = run_case(
                    "decode", impl=impl, size=size, context=16, n_tokens=12, precision=precision, batch=batch)
        if impl != "transformers" or args.quick:  # HF's step at L=512 takes minutes (SPEC: 462 s)
            print(f"[{impl}] train step L={train_len} ...", flush=True)
            results["train"][impl] = run_case("train", impl=impl, size=size, length=train_len, repeats=3)
            if impl == "mambakit":
                print(f"[{impl}] train step L={train_len} --grad-checkpoint ...", flush=True)
                results["train"][f"{impl} grad-checkpoint"] = run_case(
                    "train", impl=impl, size=size, length=train_len, repeats=3, grad_checkpoint=True)
    if args.with_llamacpp:
        print("[llama.cpp] f32 / f16 / q8_0 ...", flush=True)
        add_llamacpp(results, size, lengths, contexts)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("lm_quick.json" if args.quick else "lm.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(table(results))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
