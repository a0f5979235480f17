"""GPU benchmark: mambakit's Triton kernels against the PyTorch parallel scan, mamba_ssm's CUDA
kernels (where mamba_ssm installs) and the HBM-bandwidth bound, in one run on one GPU.

    python benchmarks/bench_gpu.py             # B=8 D=1536 N=16, L in {2k, 8k, 32k}; 130M model (< 8 min)
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --dry-run   # tiny shapes on CPU: checks the script

Measured, medians of --repeats runs after a warm-up (which also compiles the kernels):
- selective scan forward and forward+backward (gradients of every input), bf16 u/Δ/z/B/C with fp32
  A/D/Δ-bias as in mixed-precision training, softplus(Δ + bias), D skip and SiLU(z) gate; for
  each: time, state elements/s (B·D·L·N / time), peak extra GPU memory, and the HBM bound — the
  bytes the op must move at least (read u, Δ, z, B, C, write y; the backward also reads dy and
  writes every gradient) over the copy bandwidth measured in the same run;
- Mamba-2 SSD forward (prefill) at the 130M shape (24 heads × 64, d_state 128) at the first two
  lengths: the Triton kernel against the chunked PyTorch form and mamba_ssm's
  mamba_chunk_scan_combined, with the same HBM bound (read x, Δ, B, C, write y);
- a 130M Mamba (d768 × 24) training step (bf16 autocast, fused AdamW), tokens/s, per scan backend;
- decode ms/token (batch 1) with the decode ops "auto" picks (Triton on CUDA) at contexts 128 and
  8192, and with their PyTorch references at 128 (decode cost is flat in the context).
Each case stops being attempted once --budget-s has passed (recorded as skipped), so the run
finishes in time. Writes benchmarks/results/gpu.json and gpu.png (or --out).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mambakit import MambaConfig, MambaLM
from mambakit.io.atomic import atomic_write, atomic_write_text
from mambakit.ops import available_backends, available_ssd_backends, selective_scan, ssd_scan
from mambakit.ops.state_update import REGISTRY as state_update_registry
from mambakit.perf import decode_latency_ms, median_seconds

RESULTS = Path(__file__).parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d", type=int, default=1536, help="channels (d_inner)")
    p.add_argument("--n", type=int, default=16, help="d_state")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-length", type=int, default=2048)
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 8192])
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="JSON path (plot beside it)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes on CPU (run with TRITON_INTERPRET=1 to include the Triton kernels)")
    args = p.parse_args(argv)
    for name in ("batch", "d", "n", "repeats", "train_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if min(args.lengths + args.contexts) < 1:
        p.error("--lengths and --contexts must be ≥ 1")
    if args.dry_run:
        args.batch, args.d, args.n, args.lengths, args.repeats = 1, 32, 4, [12, 20], 1
        args.train_length, args.contexts = 16, [4, 8]
    return args


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write): the HBM bound's denominator."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), repeats=5, device=device)


def scan_inputs(b: int, d: int, l: int, n: int, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(b, d, l).to(dtype), delta=(r(b, d, l) - 4).to(dtype), A=-torch.rand(d, n, generator=g) - 0.5,
             B=r(b, n, l).to(dtype), C=r(b, n, l).to(dtype), D=r(d), z=r(b, d, l).to(dtype),
             delta_bias=r(d) * 0.1)
    return {k: v.to(device).requires_grad_(True) for k, v in x.items()}


def scan_fn(impl: str):
    """impl -> f(**inputs) returning the scan output; "mamba_ssm" is its selective_scan_fn."""
    if impl == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda **x: selective_scan_fn(**x, delta_softplus=True)
    return lambda **x: selective_scan(**x, delta_softplus=True, backend=impl)


def scan_bytes(b: int, d: int, l: int, n: int, itemsize: int, backward: bool) -> int:
    """Bytes a fused scan must move at least: u, Δ, z, B, C in and y out; the backward reads them
    and dy again and writes du, dΔ, dz, dB, dC."""
    per_d, per_n = b * d * l * itemsize, b * n * l * itemsize
    fwd = 4 * per_d + 2 * per_n
    return fwd + (7 * per_d + 4 * per_n if backward else 0)


def measure(row: dict, deadline: float, fn) -> dict:
    """fn(row) fills in the row's figures, unless the time budget is spent; errors are results."""
    if time.perf_counter() > deadline:
        row["skipped"] = "time budget"
    else:
        try:
            fn(row)
        except Exception as exc:  # noqa: BLE001 — a failing case (or peer) is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    print(json.dumps(row), flush=True)
    return row


def time_op(row: dict, once, nbytes: int, elements: int, repeats: int, device, bandwidth: float) -> None:
    """Median time of once(), elements/s, the HBM bound of nbytes and the share of it reached,
    and (on CUDA) the peak memory allocated beyond what was live before."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    seconds = median_seconds(once, repeats, device=device)
    row.update(median_s=seconds, elements_per_s=elements / seconds, hbm_bound_s=nbytes / bandwidth,
               fraction_of_bound=nbytes / bandwidth / seconds)
    if device.type == "cuda":
        row["peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - base


def bench_scan(args, device, dtype, impls, bandwidth, deadline) -> list:
    def case(row):
        b, d, l, n = args.batch, args.d, row["L"], args.n
        x, f = scan_inputs(b, d, l, n, device, dtype), scan_fn(row["impl"])
        dy = torch.randn(b, d, l, device=device, dtype=dtype)

        def once():
            if row["backward"]:
                torch.autograd.grad(f(**x), list(x.values()), dy)
            else:
                with torch.no_grad():
                    f(**x)

        time_op(row, once, scan_bytes(b, d, l, n, dtype.itemsize, row["backward"]), b * d * l * n,
                args.repeats, device, bandwidth)

    return [measure(dict(impl=impl, L=l, backward=backward), deadline, case)
            for l in args.lengths for backward in (False, True) for impl in impls]


def bench_ssd(args, device, dtype, impls, bandwidth, deadline) -> list:
    """Mamba-2 SSD forward (inference/prefill) at the 130M shape: h=24 heads of p=64, n=128, g=1."""
    h, p, n = (2, 4, 8) if args.dry_run else (24, 64, 128)

    def case(row):
        b, l = args.batch, row["L"]
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
        x = dict(x=r(b, l, h, p).to(dtype), dt=(r(b, l, h) - 3).to(dtype), A=-torch.rand(h, generator=g).to(device) - 0.5,
                 B=r(b, l, 1, n).to(dtype), C=r(b, l, 1, n).to(dtype), D=r(h), dt_bias=r(h) * 0.1)
        if row["impl"] == "mamba_ssm":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as f
        else:
            f = lambda **kw: ssd_scan(**kw, backend=row["impl"])  # noqa: E731

        def once():
            with torch.no_grad():
                f(**x, chunk_size=256, dt_softplus=True)

        nbytes = (2 * b * l * h * p + b * l * h + 2 * b * l * n) * dtype.itemsize
        time_op(row, once, nbytes, b * l * h * p * n, args.repeats, device, bandwidth)

    return [measure(dict(impl=impl, L=l, heads=h, headdim=p, d_state=n), deadline, case)
            for l in args.lengths[:2] for impl in impls]


def bench_model(args, device, backends, deadline) -> dict:
    """130M training tokens/s per scan backend; decode ms/token with the decode ops "auto" picks
    (the Triton ones on CUDA) at every context, and with their PyTorch references at the first."""
    config = MambaConfig.preset("130m") if not args.dry_run else MambaConfig(d_model=32, n_layer=2, vocab_size=64)
    model = MambaLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.train_length + 1), generator=g).to(device)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def train(row):
        model.set_scan_backend(row["scan_backend"])
        model.train()
        row["tokens_per_s"] = args.batch * args.train_length / median_seconds(train_step, args.repeats, device=device)

    def decode(row):
        model.set_scan_backend(row["scan_backend"])
        for context in row.pop("contexts"):
            row[f"ms_per_token_ctx{context}"] = decode_latency_ms(model, context)

    training = [measure(dict(scan_backend=b, L=args.train_length, batch=args.batch), deadline, train)
                for b in backends]
    auto = state_update_registry.resolve("auto", device).name
    decoding = [measure(dict(decode_ops=f"auto ({auto})", scan_backend="auto", contexts=args.contexts), deadline, decode),
                measure(dict(decode_ops="ref", scan_backend="ref", contexts=args.contexts[:1]), deadline, decode)]
    return dict(name="tiny" if args.dry_run else "130M", training=training, decode=decoding)


def _time_panel(ax, rows: list, title: str) -> None:
    """ms against L per implementation, log-log, with the HBM bound dashed."""
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = [r for r in rows if r["impl"] == impl and "median_s" in r]
        if pts:
            ax.plot([r["L"] for r in pts], [1e3 * r["median_s"] for r in pts], "o-", label=impl)
    bounds = {r["L"]: r["hbm_bound_s"] for r in rows if "hbm_bound_s" in r}
    if bounds:
        ax.plot(sorted(bounds), [1e3 * bounds[l] for l in sorted(bounds)], "k--", label="HBM bound")
        ax.legend()
    lengths = sorted({r["L"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(lengths, [f"{l // 1024}k" if l % 1024 == 0 else str(l) for l in lengths])
    ax.minorticks_off()
    ax.set(yscale="log", xlabel="L", ylabel="ms", title=title)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    shape = report["shape"]
    for ax, backward in zip(axes[:2], (False, True)):
        _time_panel(ax, [r for r in report["scan"] if r["backward"] == backward],
                    f"scan {'fwd+bwd' if backward else 'fwd'}, B={shape['batch']} D={shape['d']} N={shape['n']}")
    models = [r for r in report["model"]["training"] if "tokens_per_s" in r]
    axes[2].bar([r["scan_backend"] for r in models], [r["tokens_per_s"] for r in models])
    axes[2].set(ylabel="tokens/s", title=f"{report['model']['name']} training, B={shape['batch']} "
                                         f"L={shape['train_length']}, per scan backend")
    _time_panel(axes[3], report["ssd"], f"Mamba-2 SSD forward, B={shape['batch']}")
    fig.suptitle(report["device"], fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device (use --dry-run to check the script on CPU)")
    ours = [name for name in ("triton", "parallel") if available_backends(device)[name] is None]
    peers = []
    if device.type == "cuda":
        try:
            import mamba_ssm  # noqa: F401

            peers = ["mamba_ssm"]
        except ImportError:
            pass
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth(device, 1 << (30 if device.type == "cuda" else 22))
    report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                  torch=torch.__version__, dry_run=args.dry_run, dtype=str(dtype), copy_bandwidth_bytes_per_s=bandwidth,
                  shape=dict(batch=args.batch, d=args.d, n=args.n, train_length=args.train_length),
                  scan_impls=ours + peers, unavailable={k: v for k, v in available_backends(device).items()
                                                        if v is not None and k in ("triton", "parallel")})
    report["scan"] = bench_scan(args, device, dtype, ours + peers, bandwidth, deadline)
    ssd_impls = [name for name in ("triton", "chunked") if available_ssd_backends(device)[name] is None]
    report["ssd"] = bench_ssd(args, device, dtype, ssd_impls + peers, bandwidth, deadline)
    report["model"] = bench_model(args, device, ours, deadline)
    report["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
