"""Batches of packed sequences: windows over the `doc eos doc eos ...` token stream.

The batch of a training step is a pure function of (seed, step), so a resumed run sees exactly
the data the interrupted one would have, and each distributed rank takes its own slice of the same
global batch. `reset` marks document starts: a window's eos tokens open the next document (eos is
its BOS), so a model that supports reset sees every document as if it ran alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from mambakit.data.tokens import TokenDataset


@dataclass
class Batch:
    inputs: Tensor              # (b, l) int64
    targets: Tensor             # (b, l) int64, inputs shifted by one
    reset: Optional[Tensor]     # (b, l) bool, True where a document starts; None without eos

    @property
    def n_tokens(self) -> int:
        return self.targets.numel()


def windows(data: TokenDataset, starts: np.ndarray, seq_len: int) -> Batch:
    """One batch from windows of seq_len + 1 tokens beginning at `starts`."""
    idx = starts[:, None] + np.arange(seq_len + 1)                          # (b, l+1)
    window = torch.from_numpy(np.asarray(data.tokens[idx]).astype(np.int64))
    inputs, targets = window[:, :-1], window[:, 1:]
    reset = None if data.eos_token_id is None else inputs == data.eos_token_id
    return Batch(inputs, targets, reset)


def check_length(data: TokenDataset, seq_len: int, what: str) -> None:
    if len(data) < seq_len + 2:
        raise ValueError(f"{what} has {len(data)} tokens, fewer than seq_len + 2 = {seq_len + 2}; "
                         "use more data or a shorter --seq-len")


def train_batch(data: TokenDataset, seed: int, step: int, batch_size: int, seq_len: int,
                rank: int = 0, world_size: int = 1) -> Batch:
    """This rank's slice of the global batch (batch_size windows) of training step `step`."""
    check_length(data, seq_len, "the training data")
    rng = np.random.Generator(np.random.PCG64([seed, step]))   # a function of (seed, step) only
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)
    per_rank = batch_size // world_size
    return windows(data, starts[rank * per_rank:(rank + 1) * per_rank], seq_len)


def eval_batches(data: TokenDataset, seq_len: int, batch_size: int, n_batches: int) -> Iterator[Batch]:
    """Evenly spaced, non-overlapping windows over the whole split: the same ones every time."""
    seq_len = min(seq_len, len(data) - 1)
    if seq_len < 1:
        raise ValueError(f"the validation data has {len(data)} tokens; need at least 2")
    n_windows = min(batch_size * n_batches, (len(data) - 1) // seq_len)
    starts = np.linspace(0, len(data) - seq_len - 1, n_windows).astype(np.int64)
    for i in range(0, n_windows, batch_size):
        yield windows(data, starts[i:i + batch_size], seq_len)
