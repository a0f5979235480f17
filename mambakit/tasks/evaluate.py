"""Accuracy of a model on a synthetic task, at any length, in memory that does not grow with it.

A sequence longer than `cfg.eval_chunk` is fed chunk by chunk with the model's cache carried from
one chunk to the next (the recurrent state of an SSM or RNN: O(1) in the length; a Transformer's KV
cache: O(l)), and only the scored positions' logits are kept. That is the same computation as one
forward over the whole sequence — a test checks it — so a 2^20-token sequence needs the memory of
one chunk, not of 2^20 positions of activations.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.models import LanguageModel
from mambakit.tasks.common import IGNORE_INDEX, seeded

# Evaluation batches come from their own stream, far from any training seed's, and the
# validation batches that decide an early stop (SynthConfig.stop_at) from another.
EVAL_SEED_OFFSET = 1_000_000_007
VALIDATION_SEED_OFFSET = 2_000_000_011
VALIDATION_SAMPLES = 128


def length_limit(model: LanguageModel) -> Optional[int]:
    """The longest input `model` accepts, or None when any length works. Learned position tables
    end at max_seq_len; RoPE, recurrences and scans have no such end."""
    config = model.config
    return config.max_seq_len if getattr(config, "positions", None) == "learned" else None


def uses_attention(model: LanguageModel) -> bool:
    return hasattr(model.config, "n_head")


@torch.no_grad()
def scored_logits(model: LanguageModel, inputs: Tensor, targets: Tensor, vocab_size: int,
                  chunk: Optional[int] = None) -> Tensor:
    """Logits (s, vocab_size) at the s scored positions (targets != IGNORE_INDEX), row by row in
    order of position.

    With `chunk`, the sequence goes through the model `chunk` tokens at a time with its cache
    carried; without, in one forward.
    """
    l = inputs.shape[1]
    step = l if chunk is None else chunk
    cache = None if step >= l else model.allocate_cache(inputs.shape[0], max_seqlen=l)
    pieces = []
    for start in range(0, l, step):
        piece = slice(start, min(start + step, l))
        ids = inputs[:, piece].to(model.device)
        logits = model(ids) if cache is None else model(ids, cache=cache)   # (b, chunk, padded vocab)
        pieces.append(logits[..., :vocab_size][(targets[:, piece] != IGNORE_INDEX).to(logits.device)]
                      .float().cpu())                                   # (scored in chunk, v)
        del logits
    # pieces hold each chunk's scored positions in (row, position) order; regroup by row
    per_chunk = [(targets[:, slice(s, min(s + step, l))] != IGNORE_INDEX).sum(1).tolist()
                 for s in range(0, l, step)]
    rows = [[] for _ in range(inputs.shape[0])]
    for counts, logits in zip(per_chunk, pieces):
        for r, part in enumerate(logits.split(counts)):
            rows[r].append(part)
    return torch.cat([torch.cat(parts) for parts in rows]) if rows else torch.empty(0, vocab_size)


def eval_samples_at(cfg, seq_len: int) -> int:
    """Sequences evaluated at `seq_len`: cfg.eval_samples, capped by cfg.eval_max_tokens."""
    if cfg.eval_max_tokens is None:
        return cfg.eval_samples
    return max(1, min(cfg.eval_samples, cfg.eval_max_tokens // seq_len))


@torch.no_grad()
def evaluate_synth(model: LanguageModel, cfg, seq_len: int, stream: int = EVAL_SEED_OFFSET,
                   samples: Optional[int] = None) -> dict:
    """Accuracy on held-out sequences of length `seq_len`: the fraction of scored positions
    predicted exactly (argmax), and of sequences with every scored position right. `stream` picks
    the held-out data (cfg.seed + stream); `samples` overrides cfg's count."""
    limit = length_limit(model)
    reason = None
    if limit is not None and seq_len > limit:
        reason = f"learned positions end at max_seq_len {limit}"
    elif uses_attention(model) and seq_len > cfg.max_attention_eval_len:
        reason = f"attention is quadratic: not run past max_attention_eval_len {cfg.max_attention_eval_len}"
    if reason is not None:
        return {"seq_len": seq_len, "applicable": False, "token_accuracy": None,
                "sequence_accuracy": None, "samples": 0, "reason": reason}
    was_training = model.training
    model.eval()
    generator = seeded(cfg.seed + stream)
    samples = eval_samples_at(cfg, seq_len) if samples is None else samples
    batch = cfg.resolved_eval_batch_size
    right = scored = solved = 0
    for start in range(0, samples, batch):
        inputs, targets = cfg.sample(min(batch, samples - start), seq_len, generator)
        mask = targets != IGNORE_INDEX
        predicted = torch.full_like(targets, IGNORE_INDEX)
        predicted[mask] = scored_logits(model, inputs, targets, cfg.vocab_size,
                                        cfg.eval_chunk if seq_len > cfg.eval_chunk else None).argmax(-1)
        hits = (predicted == targets) & mask
        right += int(hits.sum())
        scored += int(mask.sum())
        solved += int((hits.sum(-1) == mask.sum(-1)).sum())
    model.train(was_training)
    return {"seq_len": seq_len, "applicable": True, "token_accuracy": right / scored,
            "sequence_accuracy": solved / samples, "samples": samples}
