"""`mambakit demo`: train a small Mamba on the embedded corpus, report, save, and sample."""
from __future__ import annotations

import argparse

from mambakit.cli.common import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small Mamba on the default corpus and show results")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--time-budget", type=float, default=180.0, help="seconds of training at most")
    p.add_argument("--out", default="runs/demo", help="checkpoint directory (default: runs/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mambakit.config import MambaConfig
    from mambakit.data import ByteTokenizer, load_default_corpus
    from mambakit.models import MambaLM
    from mambakit.train import TrainConfig, evaluate, train

    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = MambaLM(MambaConfig(d_model=128, n_layer=4, vocab_size=tok.vocab_size))
    cfg = TrainConfig(steps=args.steps, batch_size=8, seq_len=256, lr=3e-3, eval_every=100,
                      time_budget_s=args.time_budget)
    train_tokens = load_default_corpus("train", max_bytes=8_000_000)
    val_tokens = load_default_corpus("val", max_bytes=1_000_000)
    print(f"Mamba {model.num_parameters():,} params on {train_tokens.numel():,} bytes of stdlib source")
    before = evaluate(model, val_tokens, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
    result = train(model, train_tokens, val_tokens, cfg, checkpoint_dir=args.out)
    print(f"val bits/byte: {before['bits_per_byte']:.3f} -> {result.final_eval['bits_per_byte']:.3f} "
          f"after {result.steps} steps ({result.tokens_per_s:,.0f} train tok/s); saved to {args.out}")
    prompt = "def "
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=200, temperature=0.8, top_k=40, seed=0)
    print("--- sample ---")
    print(prompt + tok.decode(out[0, ids.shape[1]:].tolist()))
    return 0
