"""Induction Heads (Mamba paper §4.1.2; Olsson et al. 2022): associative recall of one token.

A trigger token appears once mid-sequence, followed by a random target token; at the very end the
trigger appears again and the model must output the token that followed it before ("... T x ... T
→ x"). Solving it means storing, at the moment T is seen, whatever comes next — and it is the
mechanism behind in-context learning in Transformers. The paper trains 2-layer, d_model=64 models
at length 256 with a vocabulary of 16 and tests length extrapolation from 2^6 up to 2^20.

Token ids, for a vocabulary of V:   0..V-2 = ordinary tokens · V-1 = trigger

Layout of one sequence of length l (l >= 3):

    every position          a uniform ordinary token, except
    position p              the trigger, p uniform in 0..l-3 (so the target is not the last token)
    position p+1            the target token x (an ordinary token)
    position l-1            the trigger again; the model must output x here: the only scored position
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mambakit.tasks.common import IGNORE_INDEX, require_int


def trigger_token(vocab_size: int) -> int:
    return vocab_size - 1


def check_induction_heads(seq_len: int, vocab_size: int) -> None:
    require_int("vocab_size", vocab_size, 2)        # the trigger and at least one ordinary token
    require_int("seq_len", seq_len, 3)


def induction_heads(batch_size: int, seq_len: int, vocab_size: int = 16,
                    generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """A fresh batch: inputs (b, l) int64 and targets (b, l) int64, IGNORE_INDEX except at l-1.

    The trigger occurs exactly twice per row, so the answer is never ambiguous; chance accuracy
    is 1 / (vocab_size - 1). Same `generator` state, same batch.
    """
    require_int("batch_size", batch_size, 1)
    check_induction_heads(seq_len, vocab_size)
    b, trigger = batch_size, trigger_token(vocab_size)
    inputs = torch.randint(0, trigger, (b, seq_len), generator=generator)            # (b, l)
    first = torch.randint(0, seq_len - 2, (b, 1), generator=generator)               # (b, 1)
    answer = inputs.gather(1, first + 1)                                              # (b, 1)
    inputs.scatter_(1, first, trigger)
    inputs[:, -1] = trigger
    targets = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.int64)               # (b, l)
    targets[:, -1:] = answer
    return inputs, targets
