"""`mambakit train`: train any registered model on the default corpus or your own text."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from mambakit.cli.common import emit_json, finite_float, non_negative_float, positive_int, resolve_tokenizer, seed_int


def add_data_args(p, max_bytes: int = 4_000_000) -> None:
    p.add_argument("--data", help="text file, folder, .jsonl, or a folder made by `mambakit tokenizer "
                                  "prepare` (default: the embedded stdlib corpus)")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl (default: text)")
    p.add_argument("--max-bytes", type=positive_int, default=max_bytes,
                   help=f"use at most this many bytes of training text (default: {max_bytes:,})")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (default corpus or --data)",
                       description="Train a language model with AdamW, warmup + cosine, clipping, "
                                   "checkpoints every N steps and on Ctrl-C, and exact --resume. Under "
                                   "`torchrun --nproc_per_node=N` it runs data-parallel (DDP; --fsdp).")
    p.add_argument("--model", default="mamba", help="model family from the registry (default: mamba)")
    p.add_argument("--preset", default="tiny", help="config preset (default: tiny)")
    p.add_argument("--d-model", type=positive_int, help="override d_model")
    p.add_argument("--n-layer", type=positive_int, help="override n_layer")
    p.add_argument("--budget-params", type=positive_int,
                   help="size the model to about this many parameters (overrides --preset)")
    add_data_args(p)
    p.add_argument("--tokenizer", help="tokenizer.json or a folder holding one (default: bytes)")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per step, all ranks")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step")
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--lr", type=finite_float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20, help="warmup steps (default: 20)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.1)
    p.add_argument("--grad-clip", type=finite_float, default=1.0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute each layer in the backward pass (less activation memory, more time)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--eval-every", type=int, default=100, help="0: only at the end")
    p.add_argument("--eval-batches", type=positive_int, default=8)
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint period in steps (0: end only)")
    p.add_argument("--time-budget", type=non_negative_float, help="stop after this many seconds")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP under torchrun")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept changed settings, data or tokenizer (with a warning); "
                        "by default a resume that would change the result is refused")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def build_model(args, vocab_size: int):
    from mambakit.models import build, from_config

    if args.budget_params:
        from mambakit.models.budget import configs_for_budget

        configs = configs_for_budget(args.budget_params, vocab_size=vocab_size, names=[args.model])
        return from_config(configs[args.model])
    overrides = {"vocab_size": vocab_size}
    if args.d_model:
        overrides["d_model"] = args.d_model
    if args.n_layer:
        overrides["n_layer"] = args.n_layer
    return build(args.model, args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from mambakit.train import TrainConfig
    from mambakit.train.run_dir import open_run

    out = Path(args.out)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      seq_len=args.seq_len, lr=args.lr, warmup_steps=args.warmup,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, dtype=args.dtype,
                      grad_checkpoint=args.grad_checkpoint,
                      device=args.device, eval_every=args.eval_every, eval_batches=args.eval_batches,
                      ckpt_every=args.ckpt_every, time_budget_s=args.time_budget, fsdp=args.fsdp,
                      seed=args.seed, progress=not args.no_progress)
    # rank 0 holds the run folder (refusing someone else's files or a concurrent run) before
    # anything is written into it; under torchrun the other ranks only read and train
    held = open_run(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with held:
        return _train_in(out, args, cfg)


def _train_in(out: Path, args: argparse.Namespace, cfg) -> int:
    import torch

    from mambakit.data import load_tokenizer
    from mambakit.data.tokens import load_splits
    from mambakit.models import load_model
    from mambakit.train import TrainingInterrupted, train
    from mambakit.train.checkpoint import latest_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    found = latest_checkpoint(out / "checkpoints") if args.resume else None
    # a resumed run's own tokenizer unless --tokenizer names one (a changed one is refused later)
    tokenizer = resolve_tokenizer(args.tokenizer) if args.tokenizer else load_tokenizer(found)
    torch.manual_seed(args.seed)
    # a resumed run takes its architecture from the checkpoint, not from the flags
    model = load_model(found).train() if found is not None else build_model(args, tokenizer.vocab_size)
    if model.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model.vocab_size} < tokenizer vocab {tokenizer.vocab_size}")
    train_data, val_data = load_splits(tokenizer, args.data, out / "data", args.text_field, args.max_bytes)
    try:
        result = train(model, train_data, val_data, cfg, out_dir=out, resume=args.resume,
                       tokenizer=tokenizer, allow_changes=args.allow_changes)
    except TrainingInterrupted as e:
        print(f"mambakit train: {e}; continue with --resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports for all
    summary = {"model": type(model).__name__, "parameters": model.num_parameters(),
               "steps": result.steps, "resumed_from": result.resumed_from,
               "train_tokens_per_s": result.tokens_per_s, "val": result.final_eval,
               "val_bits_per_byte": result.final_eval.get("bits_per_byte"),
               "checkpoint": str(result.checkpoint) if result.checkpoint else None, "out": str(out)}
    if args.json:
        emit_json(summary)
    elif result.final_eval:
        print(f"{summary['model']}: {summary['parameters']:,} params, {result.steps} steps, "
              f"{result.tokens_per_s:,.0f} tok/s; val loss {result.final_eval['loss']:.3f}, "
              f"bits/byte {result.final_eval['bits_per_byte']:.3f}; saved to {out}")
    return 0
