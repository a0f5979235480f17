"""`mambakit serve`: an OpenAI-compatible HTTP server for a checkpoint (see mambakit.serve)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mambakit.cli.common import add_precision_args, load_model_and_tokenizer, non_negative_float, positive_int


def port_number(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {port}")
    return port


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API",
                       description="POST /v1/completions and /v1/chat/completions (stream: true for "
                                   "server-sent events), GET /v1/models, /health, /metrics, and a "
                                   "playground page at /. Requests share one decode batch (continuous "
                                   "batching); prompt states are cached by token prefix.")
    p.add_argument("checkpoint", help="checkpoint directory (mambakit, transformers or mamba_ssm)")
    p.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: the checkpoint's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--model-name", help="the model id clients send (default: the folder name)")
    add_precision_args(p)
    p.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="requests waiting for a slot before new ones get 429")
    p.add_argument("--prefill-chunk", type=positive_int, default=256,
                   help="prompt tokens per engine step (and prefix-cache granularity)")
    p.add_argument("--state-cache-mb", type=non_negative_float, default=256.0,
                   help="memory budget of the prompt-state cache (LRU); 0 disables it")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=32768)
    p.add_argument("--max-tokens", type=positive_int, default=256,
                   help="default max_tokens for chat requests (completions: 16, as OpenAI)")
    p.add_argument("--request-timeout", type=non_negative_float,
                   help="seconds a request may take; then it ends with finish_reason 'length'")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* and /metrics")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads for the model (default: torch's, one per core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mambakit.serve.app import create_app
    from mambakit.serve.engine import Engine
    from mambakit.serve.protocol import load_chat_template
    from mambakit.serve.run import serve_forever

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.tokenizer, precision=args)
    template = load_chat_template(args.tokenizer or args.checkpoint)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue,
                    prefill_chunk=args.prefill_chunk, state_cache_mb=args.state_cache_mb,
                    request_timeout=args.request_timeout or None).start()
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(engine, name, template, api_key=args.api_key,
                     max_prompt_tokens=args.max_prompt_tokens, default_max_tokens=args.max_tokens)
    serve_forever(app, args.host, args.port)
    return 0
