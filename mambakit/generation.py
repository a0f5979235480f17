"""Generation as a few free functions (after gpt-fast): prefill, decode_one_token, sample, stream.

The model's `forward(ids, cache=...)` is the prefill (parallel path, fills the cache) and
`step(tokens, cache)` the O(1)-per-token decode; sampling is model-agnostic.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor


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


def _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


@torch.inference_mode()
def stream(model, input_ids: Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
           repetition_penalty: float = 1.0, eos_token_id: Optional[int | Sequence[int]] = None,
           seed: Optional[int] = None, attention_mask: Optional[Tensor] = None) -> Iterator[Tensor]:
    """Yield (b,) new tokens one step at a time. Finished rows (after eos) keep yielding eos.

    `attention_mask` (b, l) with 0 on left padding lets prompts of different lengths share a batch.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    model.check_input_ids(input_ids)
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one prompt token")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                       device=input_ids.device, dtype=torch.long)
    b = input_ids.shape[0]
    cache = model.allocate_cache(b, max_seqlen=input_ids.shape[1] + max_new_tokens)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    logits = model(input_ids, cache=cache, **kwargs)[:, -1]                       # prefill
    history = input_ids.long()
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        logits = logits[:, : model.vocab_size]           # never sample vocab padding
        scores = process_logits(logits, history, temperature, top_k, top_p, min_p, repetition_penalty)
        token = sample(scores, temperature, generator)
        if eos.numel():
            token = torch.where(done, eos[0], token)
            done |= torch.isin(token, eos)
        yield token
        history = torch.cat([history, token[:, None]], dim=1)
        if bool(done.all()) or i == max_new_tokens - 1:
            return
        logits = model.step(token, cache)                                          # decode


def generate(model, input_ids: Tensor, max_new_tokens: int = 64, **sampling) -> Tensor:
    """(b, l) prompt -> (b, l + new) tokens; stops early once every row produced eos."""
    new = list(stream(model, input_ids, max_new_tokens=max_new_tokens, **sampling))
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)
