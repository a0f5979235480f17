"""Sampling: logits -> token ids. Model-agnostic; works on one row or a batch.

`process_logits` applies the repetition penalty, temperature and top-k / top-p / min-p filters;
`sample` draws from the result (argmax at temperature 0). A `Sampler` carries what one sequence
(or one batch moving in lock-step) needs from step to step — its parameters, its random
generator, the tokens it has seen (for the penalty) and which rows ended at eos — so a caller
that drives decoding one step at a time (a server with a changing batch) keeps one per request.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from mambakit.checks import require_finite, require_int


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a token; temperature 0 is greedy. Checked on construction."""

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        require_finite("temperature", self.temperature, 0.0)   # nan would pass "< 0"
        require_finite("repetition_penalty", self.repetition_penalty, 0.0, low_inclusive=False)
        if self.top_k is not None:
            require_int("top_k", self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")


def process_logits(logits: Tensor, generated: Optional[Tensor] = None, temperature: float = 1.0,
                   top_k: Optional[int] = None, top_p: Optional[float] = None,
                   min_p: Optional[float] = None, repetition_penalty: float = 1.0) -> Tensor:
    """Apply repetition penalty, temperature and top-k / top-p / min-p filtering to (b, v) logits."""
    logits = logits.float()
    if repetition_penalty != 1.0 and generated is not None and generated.numel():
        # CTRL's penalty: shrink the logit of every token already in the context.
        seen = torch.gather(logits, 1, generated)
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
        logits = logits.scatter(1, generated, seen)
    if temperature > 0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p    # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if min_p is not None and min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sample(logits: Tensor, temperature: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """(b, v) processed logits -> (b,) token ids; temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class Sampler:
    """Step-to-step sampling state of b rows that advance together: call it with each step's
    (b, vocab) logits to get the (b,) next tokens. Rows that produced an eos token keep producing
    the first eos id; `finished` is True once every row has."""

    def __init__(self, params: SamplingParams, history: Tensor, seed: Optional[int] = None,
                 eos_token_id: Optional[int | Sequence[int]] = None):
        self.params = params
        self.history = history.long()                      # (b, t): the penalty's "already seen"
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=history.device).manual_seed(seed)
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        self.eos = torch.tensor(ids, dtype=torch.long, device=history.device)
        self.done = torch.zeros(history.shape[0], dtype=torch.bool, device=history.device)

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def __call__(self, logits: Tensor) -> Tensor:
        p = self.params
        scores = process_logits(logits, self.history, p.temperature, p.top_k, p.top_p, p.min_p,
                                p.repetition_penalty)
        token = sample(scores, p.temperature, self.generator)
        if self.eos.numel():
            token = torch.where(self.done, self.eos[0], token)
            self.done |= torch.isin(token, self.eos)
        self.history = torch.cat([self.history, token[:, None]], dim=1)
        return token
