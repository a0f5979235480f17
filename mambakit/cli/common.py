"""Argument helpers shared by verbs."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, None, "a positive integer")


def seed_int(text: str) -> int:
    """A seed torch and numpy both accept."""
    return _integer(text, 0, 2**63 - 1, "a seed between 0 and 2**63 - 1")


def finite_float(text: str) -> float:
    """A finite number: nan and inf would pass every `<` check and then poison the arithmetic."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value



def emit_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def resolve_tokenizer(spec):
    """The tokenizer a --tokenizer value (tokenizer.json or a folder with one) names; bytes if None.
    A folder without tokenizer.json is an error, not bytes: the user named a tokenizer."""
    from mambakit.data import load_tokenizer
    from mambakit.data.tokenizer import TOKENIZER_FILE

    if spec is not None and not Path(spec).exists():
        raise FileNotFoundError(f"--tokenizer {spec}: no such file or folder")
    if spec is not None and Path(spec).is_dir() and not (Path(spec) / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"--tokenizer {spec}: the folder holds no {TOKENIZER_FILE}")
    return load_tokenizer(spec)


def add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="weight format of the Linear layers (SSM state, conv, norms stay fp32)")
    p.add_argument("--quantize", choices=["int8"],
                   help="int8 weight-only quantization of the Linear layers (per-channel scales)")


def apply_precision(model, args: argparse.Namespace):
    """The model in the weight format --dtype / --quantize ask for (mambakit.quantize). A
    checkpoint saved quantized stays as it is unless another format is asked for explicitly."""
    from mambakit import quantize

    fmt = args.quantize or args.dtype
    if getattr(model, "quantization", None) is not None and fmt == "fp32":
        return model
    return quantize(model, fmt)


def load_model_and_tokenizer(checkpoint: str, tokenizer_spec=None, precision: argparse.Namespace | None = None):
    """A checkpoint's model with its tokenizer (--tokenizer overrides the checkpoint's own),
    refusing a pair whose vocabularies don't fit each other; in the weight format `precision`
    (parsed --dtype / --quantize) asks for."""
    from mambakit.data import load_tokenizer
    from mambakit.data.tokenizer import check_tokenizer_fits, tokenizer_fingerprint
    from mambakit.models import load_model

    model = load_model(checkpoint)
    if precision is not None:
        model = apply_precision(model, precision)
    own = load_tokenizer(checkpoint)   # bytes when the checkpoint carries no tokenizer.json
    tokenizer = own if tokenizer_spec is None else resolve_tokenizer(tokenizer_spec)
    # Same size is not the same tokenizer: with one of its own, the checkpoint's must be the one.
    if own.kind != "bytes" and tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(own):
        raise ValueError(f"--tokenizer {tokenizer_spec} is not the tokenizer {checkpoint} was saved "
                         f"with (its tokenizer.json differs); leave --tokenizer out to use that one")
    check_tokenizer_fits(tokenizer, model)
    return model, tokenizer
