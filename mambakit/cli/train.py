"""`mambakit train`: train a model on the default corpus and save a checkpoint."""
from __future__ import annotations

import argparse

from mambakit.cli.common import emit_json, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on the embedded default corpus",
                       description="Train a byte-level language model on the Python standard "
                                   "library's source (the embedded default corpus).")
    p.add_argument("--model", default="mamba", help="model family (default: mamba)")
    p.add_argument("--preset", default="tiny", help="config preset (default: tiny)")
    p.add_argument("--d-model", type=positive_int, help="override d_model")
    p.add_argument("--n-layer", type=positive_int, help="override n_layer")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=positive_int, default=4_000_000,
                   help="use at most this many bytes of training text")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.data import ByteTokenizer, load_default_corpus
    from mambakit.models import build
    from mambakit.train import TrainConfig, evaluate, train

    import torch

    torch.manual_seed(args.seed)
    overrides = {"vocab_size": ByteTokenizer.vocab_size}
    if args.d_model:
        overrides["d_model"] = args.d_model
    if args.n_layer:
        overrides["n_layer"] = args.n_layer
    model = build(args.model, args.preset, **overrides)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      seed=args.seed, eval_every=max(args.steps, 1), progress=not args.no_progress,
                      warmup_steps=min(20, args.steps))
    train_tokens = load_default_corpus("train", max_bytes=args.max_bytes)
    val_tokens = load_default_corpus("val", max_bytes=args.max_bytes // 10 + args.seq_len + 2)
    before = evaluate(model, val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
    result = train(model, train_tokens, val_tokens, cfg, checkpoint_dir=args.out)
    summary = {"model": args.model, "parameters": model.num_parameters(), "steps": result.steps,
               "val_bits_per_byte_before": before["bits_per_byte"],
               "val_bits_per_byte_after": result.final_eval["bits_per_byte"],
               "tokens_per_s": result.tokens_per_s, "checkpoint": args.out}
    if args.json:
        emit_json(summary)
    else:
        print(f"{args.model}: {summary['parameters']:,} params, {result.steps} steps, "
              f"{result.tokens_per_s:,.0f} tok/s; val bits/byte "
              f"{before['bits_per_byte']:.3f} -> {result.final_eval['bits_per_byte']:.3f}; "
              f"saved to {args.out}")
    return 0
