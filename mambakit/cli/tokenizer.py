"""`mambakit tokenizer train|prepare`: train a byte-level BPE; tokenize a corpus to token files."""
from __future__ import annotations

import argparse

from mambakit.cli.common import emit_json, positive_int, resolve_tokenizer
from mambakit.cli.train import add_data_args


def add_parser(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a BPE tokenizer, or tokenize a corpus to token files")
    verbs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = verbs.add_parser("train", help="train a byte-level BPE tokenizer (tokenizers library)")
    add_data_args(t)
    t.add_argument("--vocab-size", type=positive_int, required=True)
    t.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=run_train)
    r = verbs.add_parser("prepare", help="tokenize text into memory-mapped train/val token files")
    add_data_args(r)
    r.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: bytes)")
    r.add_argument("--out", required=True, help="folder for train.bin/val.bin (+ .json headers)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_prepare)


def run_train(args: argparse.Namespace) -> int:
    from mambakit.data.bpe import train_bpe
    from mambakit.data.sources import iter_texts

    # Training documents only: a tokenizer fitted to the validation text would flatter its scores.
    texts = iter_texts(None if args.data is None else [args.data], args.text_field, args.max_bytes,
                       split="train")
    tok = train_bpe(texts, args.vocab_size)
    tok.save(args.out)
    if args.json:
        emit_json({"out": args.out, "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_token_id})
    else:
        print(f"BPE tokenizer with {tok.vocab_size:,} tokens saved to {args.out}/tokenizer.json")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from mambakit.data.tokens import open_tokens, prepare

    tok = resolve_tokenizer(args.tokenizer)
    out = prepare(args.out, tok, None if args.data is None else [args.data], args.text_field, args.max_bytes)
    sizes = {split: len(open_tokens(out, split, tok)) for split in ("train", "val")}
    if args.json:
        emit_json({"out": str(out), "tokens": sizes})
    else:
        print(f"{sizes['train']:,} train and {sizes['val']:,} val tokens written to {out}")
    return 0
