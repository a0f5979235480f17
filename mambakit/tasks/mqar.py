"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", §3): the recall task that
separates attention from fixed-state recurrent models by state size.

Token ids, for a vocabulary of V:  1 .. V/2-1 = keys · V/2 .. V-1 = values · 0 and any id = filler

Layout of one sequence of length l with K key-value pairs (l even, l >= 4K):

    positions 0 .. 2K-1        k_1 v_1 k_2 v_2 … k_K v_K   (K distinct keys, K distinct values)
    positions 2K .. l-1        the query region: key k_i again at position 2K + 2·g_i, where the
                               gaps g_i are distinct in [0, (l-2K)/2) and drawn with probability
                               ∝ (g+1)^(a-1) (a = power_a, 0.01: a power law, most queries come soon
                               after the context, some far away); every other position is filler, a
                               uniform random id (Zoology's random_non_queries), else 0
    scored                     at each query k_i the model must output v_i (the next token)

Chance is 1 / (number of values).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.tasks.common import IGNORE_INDEX, require_int


def check_mqar(seq_len: int, num_kv_pairs: int, vocab_size: int) -> None:
    require_int("num_kv_pairs", num_kv_pairs, 1)
    require_int("seq_len", seq_len, 4)
    require_int("vocab_size", vocab_size, 4)
    if seq_len % 2 or seq_len < 4 * num_kv_pairs:
        raise ValueError(f"MQAR needs an even seq_len >= 4 * num_kv_pairs ({4 * num_kv_pairs}), got {seq_len}")
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(f"MQAR needs vocab_size // 2 - 1 >= num_kv_pairs distinct keys, "
                         f"got vocab_size={vocab_size} for {num_kv_pairs} pairs")


def mqar(batch_size: int, seq_len: int, num_kv_pairs: int = 8, vocab_size: int = 8192, power_a: float = 0.01,
         random_non_queries: bool = True, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """A fresh batch: inputs (b, l) int64, targets (b, l) int64 with the value at each query's
    position and IGNORE_INDEX elsewhere. Same `generator` state, same batch."""
    require_int("batch_size", batch_size, 1)
    check_mqar(seq_len, num_kv_pairs, vocab_size)
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a}")
    b, k, half = batch_size, num_kv_pairs, vocab_size // 2
    # k distinct keys from 1..half-1 and k distinct values from half..V-1 per row
    keys = torch.rand(b, half - 1, generator=generator).argsort(-1)[:, :k] + 1           # (b, k)
    values = torch.rand(b, vocab_size - half, generator=generator).argsort(-1)[:, :k] + half
    space = (seq_len - 2 * k) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(b, space), k, replacement=False, generator=generator)  # (b, k)
    query_at = 2 * k + 2 * gaps                                                          # (b, k)
    if random_non_queries:
        inputs = torch.randint(0, vocab_size, (b, seq_len), generator=generator)
    else:
        inputs = torch.zeros(b, seq_len, dtype=torch.int64)
    inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2] = keys, values
    inputs.scatter_(1, query_at, keys)
    targets = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.int64)
    targets.scatter_(1, query_at, values)
    return inputs, targets
