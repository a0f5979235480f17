"""`mambakit bench`: how fast mambakit runs on this machine (scan backends, model prefill/decode).

Thin layer over mambakit.perf. Comparisons against the peers (transformers, mambapy) are the
scripts in benchmarks/ (`make bench`).
"""
from __future__ import annotations

import argparse

from mambakit.cli.common import add_precision_args, apply_precision, emit_json, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure scan backends or a model's prefill/decode speed here",
                       description="Medians of repeated runs on this machine. `scan`: selective-scan "
                                   "backends side by side; `model`: prefill tokens/s and decode "
                                   "ms/token at several context lengths.")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = what.add_parser("scan", help="selective-scan backends (elements/s)")
    s.add_argument("--backends", default="cpu,ref", help="comma-separated (default: cpu,ref)")
    s.add_argument("--batch", type=positive_int, default=1)
    s.add_argument("--d", type=positive_int, default=1536)
    s.add_argument("--n", type=positive_int, default=16)
    s.add_argument("--lengths", type=positive_int, nargs="+", default=[512, 2048])
    s.add_argument("--backward", action="store_true", help="time forward + backward")
    s.add_argument("--repeats", type=positive_int, default=5)
    s.add_argument("--json", action="store_true")
    m = what.add_parser("model", help="prefill tokens/s and decode ms/token of a model")
    m.add_argument("checkpoint", nargs="?", help="checkpoint dir (else --model/--preset, random weights)")
    m.add_argument("--model", default="mamba")
    m.add_argument("--preset", default="130m")
    m.add_argument("--prefill", type=positive_int, default=2048, help="prompt length for prefill")
    m.add_argument("--contexts", type=positive_int, nargs="+", default=[128, 2048])
    add_precision_args(m)
    m.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit import perf

    if args.what == "scan":
        rows = [perf.scan_throughput(be.strip(), args.batch, args.d, args.n, l, args.backward, args.repeats)
                for be in args.backends.split(",") if be.strip() for l in args.lengths]
        if args.json:
            emit_json(rows)
            return 0
        mode = "fwd+bwd" if args.backward else "fwd"
        print(f"selective scan {mode}, B={args.batch} D={args.d} N={args.n}")
        for r in rows:
            print(f"  {r['backend']:<9} L={r['l']:<6} {r['median_s'] * 1e3:9.2f} ms  "
                  f"{r['elements_per_s']:.3g} elements/s")
        return 0

    from mambakit.models import build, load_model

    model = load_model(args.checkpoint) if args.checkpoint else build(args.model, args.preset)
    model = apply_precision(model, args)
    result = {"model": type(model).__name__, "parameters": model.num_parameters(),
              "weights": getattr(model, "quantization", None) or "fp32",
              "prefill_length": args.prefill,
              "prefill_tokens_per_s": perf.prefill_tokens_per_s(model, args.prefill),
              "decode_ms_per_token": {str(c): perf.decode_latency_ms(model, c) for c in args.contexts}}
    if args.json:
        emit_json(result)
        return 0
    print(f"{result['model']} ({result['parameters']:,} params, {result['weights']} weights): prefill L={args.prefill} "
          f"{result['prefill_tokens_per_s']:,.0f} tok/s")
    for context, ms in result["decode_ms_per_token"].items():
        print(f"  decode at context {context:>6}: {ms:.2f} ms/token")
    return 0
