"""`mambakit generate`: sample text from a checkpoint directory (any format convert knows)."""
from __future__ import annotations

import argparse
import sys

from mambakit.cli.common import (
    add_precision_args,
    emit_json,
    finite_float,
    load_model_and_tokenizer,
    non_negative_float,
    positive_int,
    seed_int,
)


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint",
                       description="Prefill the prompt(s), then decode one token at a time. Several "
                                   "--prompt values run as one left-padded batch. The checkpoint's "
                                   "tokenizer.json is used when it has one, bytes otherwise; --tokenizer "
                                   "overrides it.")
    p.add_argument("checkpoint", help="checkpoint directory (mambakit, transformers or mamba_ssm)")
    p.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: the "
                                       "checkpoint's, else bytes)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat to batch (default: 'def ')")
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="tokens to generate (default: 64); recurrent models decode in constant "
                        "memory, so a huge value just runs: Ctrl-C stops it")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=finite_float)
    p.add_argument("--min-p", type=finite_float)
    p.add_argument("--repetition-penalty", type=finite_float, default=1.0)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--stop", action="append", default=[],
                   help="stop a row once its text contains this string (repeatable; not printed)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print text as it is generated (one prompt, no --json)")
    add_precision_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.generation import TextStream

    model, tok = load_model_and_tokenizer(args.checkpoint, args.tokenizer, precision=args)
    prompts = args.prompt or ["def "]
    stop = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]  # so "\n\n" can be typed
    text = TextStream(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                      stop=stop)
    live = args.stream and not args.json and len(prompts) == 1
    for i, step in enumerate(text):
        if live and i == 0:  # not before: the first step is where a bad sampling option is refused
            sys.stdout.write(prompts[0])
        if live and step[0]:
            sys.stdout.write(step[0])
            sys.stdout.flush()
    completions = [d.text for d in text.decoders]
    if args.json:
        emit_json({"tokenizer": tok.kind, "results": [
            {"prompt": p, "completion": d.text, "tokens": ids + d.ids}
            for p, ids, d in zip(prompts, text.prompt_ids, text.decoders)]})
    elif live:
        sys.stdout.write("\n")
    else:
        print("\n\n".join(p + c for p, c in zip(prompts, completions)))
    return 0
