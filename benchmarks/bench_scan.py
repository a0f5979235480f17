"""Selective-scan benchmark: mambakit's ref / parallel / fused cpu backends against mambapy's pscan
and transformers' slow path, side by side in one run, against the exp-throughput roofline.

    python benchmarks/bench_scan.py            # B=1 D=1536 N=16, L in {512, 2048, 8192} (minutes)
    python benchmarks/bench_scan.py --quick    # tiny smoke run

Every (implementation, L, mode) runs in its own subprocess so its peak memory is a clean
`ru_maxrss` delta (torch allocations are invisible to tracemalloc). Sequential peers are slow and
the materialising ones need O(B·L·D·N) memory, so past a per-implementation length they are
extrapolated linearly from the longest measured L (marked "extrapolated" in the JSON, hollow in the
plot). The roofline is one exp per state element at the machine's measured exp throughput
(torch.exp on one thread × threads). Writes benchmarks/results/scan.json and scan.png.
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
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mambakit.io.atomic import atomic_write, atomic_write_text
from mambakit.ops import selective_scan

IMPLS = ["cpu", "parallel", "ref", "mambapy", "hf_slow"]
# Longest L measured (forward, forward+backward); longer ones are extrapolated linearly.
MAX_MEASURED = {"ref": (2048, 512), "hf_slow": (8192, 512), "mambapy": (8192, 2048),
                "parallel": (8192, 2048), "cpu": (1 << 30, 1 << 30)}


def hf_slow_scan(u, delta, A, B, C, D, z, delta_bias):
    """The scan of transformers' MambaMixer.slow_forward (recurrent path); B, C: (b, l, n)."""
    b, d, l = u.shape
    dt = F.softplus(delta + delta_bias[:, None])
    discrete_A = torch.exp(A[None, :, None, :] * dt[:, :, :, None])       # (b, d, l, n)
    deltaB_u = dt[:, :, :, None] * B[:, None, :, :] * u[:, :, :, None]    # (b, d, l, n)
    ssm_state = u.new_zeros(b, d, A.shape[1])
    scan_outputs = []
    for i in range(l):
        ssm_state = discrete_A[:, :, i] * ssm_state + deltaB_u[:, :, i]
        scan_outputs.append(torch.matmul(ssm_state, C[:, i, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(scan_outputs, dim=-1) + u * D[None, :, None]
    return y * F.silu(z)


def mambapy_scan(x, delta, A, B, C, D, z, delta_bias):
    """mambapy's MambaBlock.selective_scan with its softplus and gate; (b, l, d) layout."""
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)                              # (b, l, d, n)
    BX = dt.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)              # (b, l, d, n)
    hs = pscan(deltaA, BX)
    y = (hs @ C.unsqueeze(-1)).squeeze(3) + D * x
    return y * F.silu(z)


def make_case(impl: str, b: int, d: int, l: int, n: int) -> tuple:
    """Inputs in the implementation's own layout (untimed) and the function to time."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5 - 1, A=-torch.arange(1, n + 1.0).repeat(d, 1),
             B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.1)
    if impl == "hf_slow":
        x["B"], x["C"] = x["B"].transpose(1, 2).contiguous(), x["C"].transpose(1, 2).contiguous()
        return x, lambda **kw: hf_slow_scan(**kw)
    if impl == "mambapy":
        for k in ("u", "delta", "z", "B", "C"):
            x[k] = x[k].transpose(1, 2).contiguous()                        # (b, l, ·)
        x["x"] = x.pop("u")
        return x, lambda **kw: mambapy_scan(**kw)
    return x, lambda **kw: selective_scan(**kw, delta_softplus=True, backend=impl)


def worker(spec: dict) -> dict:
    """Time one (impl, L, mode) in this process; peak memory as the ru_maxrss growth."""
    torch.set_num_threads(spec["threads"])
    if spec["impl"] == "mambapy":
        import mambapy.pscan  # noqa: F401  (fail here, before timing, if absent)
    x, fn = make_case(spec["impl"], spec["b"], spec["d"], spec["l"], spec["n"])
    backward = spec["mode"] == "fwd+bwd"
    if backward:
        x = {k: v.requires_grad_(True) for k, v in x.items()}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def once():
        out = fn(**x)
        if backward:
            torch.autograd.grad(out.sum(), list(x.values()))

    once()  # warm-up (and the one-time kernel load)
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base   # KiB on Linux
    return {"median_s": statistics.median(times), "times_s": times, "peak_mem_mb": peak / 1024}


def run_worker(spec: dict, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exp_throughput(threads: int) -> float:
    """exp/s of the machine: torch.exp on a large fp32 tensor on one thread, times `threads`."""
    torch.set_num_threads(1)
    x, out = torch.randn(1 << 24), torch.empty(1 << 24)
    torch.exp(x, out=out)
    best = min(_timed(lambda: torch.exp(x, out=out)) for _ in range(5))
    torch.set_num_threads(threads)
    return x.numel() / best * threads


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def compile_time() -> dict:
    """One-time build of the fused kernel in an empty cache, then a second process that reuses it."""
    code = ("import torch; from mambakit.ops import cpu_kernels; r = cpu_kernels.available(torch.device('cpu'));"
            "print(cpu_kernels.compile_seconds(), r)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MAMBAKIT_CACHE": tmp}
        first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                         .stdout.strip() for _ in range(2))
    return {"first_process": first, "second_process": second}


def benchmark(args) -> dict:
    results, threads = [], args.threads or torch.get_num_threads()
    for mode in ("fwd", "fwd+bwd"):
        for impl in IMPLS:
            limit = MAX_MEASURED[impl][mode == "fwd+bwd"]
            measured = None
            for l in args.lengths:
                row = {"impl": impl, "mode": mode, "L": l, "extrapolated": l > limit and measured is not None}
                if row["extrapolated"]:
                    scale = l / measured["L"]
                    row.update(median_s=measured["median_s"] * scale, peak_mem_mb=measured["peak_mem_mb"] * scale)
                else:
                    spec = dict(impl=impl, mode=mode, b=args.batch, d=args.d, l=l, n=args.n,
                                repeats=args.repeats, threads=threads)
                    row.update(run_worker(spec))
                if "median_s" in row:
                    row["elements_per_s"] = args.batch * args.d * l * args.n / row["median_s"]
                    if not row["extrapolated"]:
                        measured = row
                print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
                results.append(row)
    exp_rate = exp_throughput(threads)
    return {"config": {"B": args.batch, "D": args.d, "N": args.n, "L": args.lengths, "repeats": args.repeats,
                       "threads": threads, "torch": torch.__version__, "machine": platform.machine(),
                       "cpu": _cpu_name()},
            "exp_per_s": exp_rate, "compile": compile_time(), "results": results,
            "speedup_fwd_cpu_vs": _speedups(results, args.lengths)}


def _speedups(results: list, lengths: list) -> dict:
    l = 2048 if 2048 in lengths else lengths[-1]
    t = {r["impl"]: r["median_s"] for r in results if r["mode"] == "fwd" and r["L"] == l and "median_s" in r}
    return {f"{impl}@L{l}": t[impl] / t["cpu"] for impl in t if impl != "cpu" and "cpu" in t}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        for impl in IMPLS:
            rows = [r for r in report["results"] if r["impl"] == impl and r["mode"] == mode and "elements_per_s" in r]
            if not rows:
                continue
            line, = ax.plot([r["L"] for r in rows], [r["elements_per_s"] for r in rows], "-", label=impl)
            for r in rows:
                ax.plot(r["L"], r["elements_per_s"], "o", color=line.get_color(),
                        fillstyle="none" if r["extrapolated"] else "full")
        ax.axhline(report["exp_per_s"], color="k", ls="--", lw=1, label="exp roofline")
        ax.set(xscale="log", yscale="log", xlabel="sequence length L", title=mode)
    axes[0].set_ylabel("state elements / s  (B·D·L·N / time)")
    axes[1].legend(fontsize=8)
    cfg = report["config"]
    fig.suptitle(f"selective scan, B={cfg['B']} D={cfg['D']} N={cfg['N']}, {cfg['threads']} threads "
                 f"(hollow = extrapolated)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (D=64, L 64 and 256), 3 repeats: a smoke run")
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.d, args.lengths, args.repeats = 64, [64, 256], 3
    report = benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "scan.json", json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "scan.png")
    print(json.dumps({"exp_per_s": report["exp_per_s"], "compile": report["compile"],
                      "speedup_fwd_cpu_vs": report["speedup_fwd_cpu_vs"]}))


if __name__ == "__main__":
    main()
