"""Selective Copying (Mamba paper §3.1 Fig. 2, §4.1.1): remember a few data tokens scattered among
noise, then reproduce them in order.

The plain Copying task puts the data tokens at fixed positions, which a time-invariant model (a
convolution with the right lag) solves without looking at the content. Scattering them at random
positions forces content-aware selection: keep the data tokens, ignore the noise — exactly what an
LTI SSM cannot do and a selective one can. The paper trains 2-layer, d_model=64 models on
sequences of length 4096 with 16 data tokens and a vocabulary of 16 (noise token included).

Token ids, for a vocabulary of V:   0 = noise · 1..V-2 = data · V-1 = marker ("copy now")

Layout of one sequence of length l with M data tokens (l >= 2M):

    positions 0 .. l-M-1     noise, with the M data tokens at M distinct random positions
    positions l-M .. l-1     M markers; at the j-th marker the model must output data token j
                             (the j-th in order of position): only these M positions are scored
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.tasks.common import IGNORE_INDEX, require_int

NOISE = 0


def marker_token(vocab_size: int) -> int:
    return vocab_size - 1


def check_selective_copying(seq_len: int, num_tokens: int, vocab_size: int) -> None:
    require_int("num_tokens", num_tokens, 1)
    require_int("vocab_size", vocab_size, 3)        # noise, marker and at least one data token
    require_int("seq_len", seq_len, 1)
    if seq_len < 2 * num_tokens:
        raise ValueError(f"selective copying needs seq_len >= 2 * num_tokens (room for {num_tokens} "
                         f"data tokens and {num_tokens} markers), got seq_len={seq_len}")


def selective_copying(batch_size: int, seq_len: int, num_tokens: int = 16, vocab_size: int = 16,
                      generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """A fresh batch: inputs (b, l) int64 and targets (b, l) int64, IGNORE_INDEX where not scored.

    Data tokens are drawn uniformly from 1..vocab_size-2 (with repeats), so chance accuracy on a
    scored position is 1 / (vocab_size - 2). Same `generator` state, same batch.
    """
    require_int("batch_size", batch_size, 1)
    check_selective_copying(seq_len, num_tokens, vocab_size)
    b, m, body = batch_size, num_tokens, seq_len - num_tokens
    data = torch.randint(1, vocab_size - 1, (b, m), generator=generator)            # (b, m)
    # M distinct positions per row, sorted so "in order" means in order of position
    positions = torch.rand(b, body, generator=generator).argsort(dim=-1)[:, :m]       # (b, m)
    positions = positions.sort(dim=-1).values
    inputs = torch.full((b, seq_len), NOISE, dtype=torch.int64)                       # (b, l)
    inputs[:, :body].scatter_(1, positions, data)
    inputs[:, body:] = marker_token(vocab_size)
    targets = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.int64)               # (b, l)
    targets[:, body:] = data
    return inputs, targets
