"""`mambakit` entry point: one parser, one verb per module, one-line errors on bad input."""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from mambakit.cli import bench, convert, demo, eval, generate, plot, serve, synth, tokenizer, train

VERBS = [demo, train, eval, generate, bench, synth, convert, plot, tokenizer, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambakit",
        description="Mamba and its lineage (RNN, Transformer, S4, selective scan): run, train, "
                    "compare and show sequence models on any machine.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|Cannot allocate memory")
# Errors that mean "the user gave us something wrong": reported in one line, exit code 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FloatingPointError, OSError)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mambakit: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning  # a user reads one line, not a source location
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as e:
        if not OUT_OF_MEMORY.search(str(e)) and not isinstance(e, MemoryError):
            raise
        # what no estimate foresaw: still one line, with the allocator's own numbers
        print(f"mambakit {args.verb}: error: out of memory ({str(e).strip().splitlines()[0][:200]}); "
              f"use smaller sizes", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if os.environ.get("MAMBAKIT_DEBUG"):
            raise
        print(f"mambakit {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
