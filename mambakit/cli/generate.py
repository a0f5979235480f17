"""`mambakit generate`: sample text from a checkpoint directory."""
from __future__ import annotations

import argparse

from mambakit.cli.common import emit_json, non_negative_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint",
                       description="Prefill the prompt, then decode one token at a time.")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--prompt", default="def ", help="prompt text")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mambakit.data import ByteTokenizer
    from mambakit.io.checkpoint import load_model

    model = load_model(args.checkpoint)
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode(args.prompt)], dtype=torch.long)
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                         repetition_penalty=args.repetition_penalty, seed=args.seed)
    text = tok.decode(out[0, ids.shape[1]:].tolist())
    if args.json:
        emit_json({"prompt": args.prompt, "completion": text, "tokens": out[0].tolist()})
    else:
        print(args.prompt + text)
    return 0
