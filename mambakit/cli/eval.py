"""`mambakit eval`: validation loss, bits/byte and perplexity of a checkpoint."""
from __future__ import annotations

import argparse
import tempfile

from mambakit.cli.common import add_precision_args, emit_json, load_model_and_tokenizer, positive_int
from mambakit.cli.train import add_data_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="validation loss / bits-per-byte / perplexity of a checkpoint",
                       description="Evaluate a checkpoint directory on the validation split of the "
                                   "default corpus or --data, with the tokenizer saved beside it "
                                   "(or --tokenizer).")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    add_data_args(p, max_bytes=1_000_000)
    p.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: the "
                                       "checkpoint's, else bytes)")
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--batches", type=positive_int, default=16, help="evaluation batches (default: 16)")
    add_precision_args(p)  # --dtype bf16 also evaluates under bf16 autocast
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.data.tokens import load_splits
    from mambakit.train import evaluate

    model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.tokenizer, precision=args)
    with tempfile.TemporaryDirectory(prefix="mambakit-eval-") as cache:
        _, val = load_splits(tokenizer, args.data, cache, args.text_field, args.max_bytes)
        result = evaluate(model, val, args.seq_len, args.batch_size, args.batches, args.dtype)
    result = {"checkpoint": args.checkpoint, **result}
    if args.json:
        emit_json(result)
    else:
        print(f"{args.checkpoint}: val loss {result['loss']:.4f} nats/token, "
              f"{result['bits_per_byte']:.4f} bits/byte, perplexity {result['perplexity']:.2f} "
              f"({result['tokens']:,} tokens, {result['bytes']:,} bytes)")
    return 0
