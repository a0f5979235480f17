"""`mambakit convert`: re-save a checkpoint as mambakit, transformers or mamba_ssm."""
from __future__ import annotations

import argparse

from mambakit.cli.common import emit_json


def add_parser(sub) -> None:
    from mambakit.formats.checkpoint import FORMATS

    p = sub.add_parser("convert", help="convert a checkpoint between mambakit, transformers and mamba_ssm",
                       description="Load SRC (its format is detected from config.json) and write it to "
                                   "DST in --to format; tokenizer files are copied along. DST must be a "
                                   "new or empty folder (one holding a checkpoint is refused).")
    p.add_argument("src", help="checkpoint directory to read")
    p.add_argument("dst", help="directory to write")
    p.add_argument("--to", dest="format", choices=FORMATS, required=True, help="format to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.models import convert

    source_format = convert(args.src, args.dst, args.format)
    if args.json:
        emit_json({"src": args.src, "src_format": source_format, "dst": args.dst, "dst_format": args.format})
    else:
        print(f"{args.src} ({source_format}) -> {args.dst} ({args.format})")
    return 0
