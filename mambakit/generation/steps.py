"""Generation as composable steps (after gpt-fast): `prefill`, `decode_one_token`,
`decode_n_tokens`; `stream` and `generate` compose them. Sampling lives in `sampling.py`.

The model's `forward(ids, cache=...)` is the prefill (parallel path, fills the cache) and
`step(tokens, cache)` the O(1)-per-token decode. Each function takes the cache and a `Sampler`
explicitly, so a caller can drive decoding one step at a time for a batch whose rows change
between steps (the server's continuous batching) instead of going through `stream`.

Batches of prompts of different lengths are LEFT-padded: every row's last prompt token sits in
the last column, so one prefill yields every row's next-token logits and decoding proceeds in
lock-step. `attention_mask` (0 on pads) keeps the pads out of the recurrent state entirely
(MambaLM zeroes them before the conv and uses Δ = 0 for them in the scan), so a padded row
generates exactly what it would alone.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from mambakit.checks import require_int
from mambakit.generation.sampling import Sampler, SamplingParams


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Left-pad token-id lists into (input_ids (b, l) int64, attention_mask (b, l) int64, 0 on pads)."""
    if not prompts:
        raise ValueError("pad_prompts: no prompts given")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"pad_prompts: prompt(s) {empty} are empty; every prompt needs a token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask


def _check_attention_mask(model, mask: Tensor, input_ids: Tensor, cache) -> None:
    m = model.check_attention_mask(mask, input_ids).long()
    if not bool((m[:, 1:] >= m[:, :-1]).all()) or not bool(m[:, -1].all()):
        raise ValueError("attention_mask must be LEFT padding (0s then 1s, last column all 1): "
                         "right padding would sample from a pad position")
    if not bool(m.all()) and getattr(cache, "seqlen_offset", 0) > 0:
        # A pad between the carried conv state and the new tokens would sit inside the conv window.
        raise ValueError("left padding cannot follow a carried state (cache); continue unpadded rows")


PREFILL_CHUNK = 2048  # tokens per prefill pass: bounds activation memory for long prompts


def prefill(model, input_ids: Tensor, cache, attention_mask: Optional[Tensor] = None,
            chunk_size: int = PREFILL_CHUNK) -> Tensor:
    """Run the prompt through the model into `cache`; return the last position's logits (b, v).

    Long prompts go in chunks that continue from the cache — exact for every model (recurrent
    state or KV cache) — so peak memory is that of `chunk_size` tokens, not of the whole prompt.
    Left padding stays in the first chunk (a pad may not follow a carried state), together with
    every row's first real token.
    """
    l = input_ids.shape[1]
    first = chunk_size
    if attention_mask is not None and not bool(attention_mask.all()):
        padded_columns = (~attention_mask.bool()).any(0).nonzero()
        first = max(chunk_size, int(padded_columns.max()) + 2)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask[:, :first]}
    logits = model(input_ids[:, :first], cache=cache, logits_to_keep=1, **kwargs)[:, -1]
    for start in range(first, l, chunk_size):
        logits = model(input_ids[:, start:start + chunk_size], cache=cache, logits_to_keep=1)[:, -1]
    return logits


def decode_one_token(model, token: Tensor, cache, sampler: Sampler) -> Tensor:
    """Feed `token` (b,) to the model — the cache advances one position — and sample the next (b,)."""
    return sampler(model.step(token, cache)[:, : model.vocab_size])   # never sample vocab padding


def decode_n_tokens(model, token: Tensor, cache, n: int, sampler: Sampler,
                    feed_last: bool = True) -> Iterator[Tensor]:
    """Yield `token` (b,) and up to n - 1 tokens decoded after it, fewer once `sampler.finished`.

    At every yield the cache has absorbed every token yielded so far, so decoding can resume
    from it; `feed_last=False` skips feeding the final token when nobody will resume.
    """
    for i in range(n):
        last = sampler.finished or i == n - 1
        if feed_last or not last:
            following = decode_one_token(model, token, cache, sampler)
        yield token
        if last:
            return
        token = following


@torch.no_grad()
def stream(model, input_ids: Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
           repetition_penalty: float = 1.0, eos_token_id: Optional[int | Sequence[int]] = None,
           seed: Optional[int] = None, attention_mask: Optional[Tensor] = None,
           cache=None) -> Iterator[Tensor]:
    """Yield (b,) new tokens one step at a time. Finished rows (after eos) keep yielding eos.

    `attention_mask` (b, l), 0 on left padding, lets prompts of different lengths share a batch
    (see `pad_prompts`). `cache` (from `model.allocate_cache` or `mambakit.state.load_state`)
    continues from a saved state: `input_ids` are then the tokens after it. A passed cache is
    advanced in place and, at every yield, holds the state after the prompt and every token
    yielded so far — generation can be resumed from it later.
    """
    require_int("max_new_tokens", max_new_tokens, 0)
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    model.check_input_ids(input_ids)
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one prompt token")
    keep_cache = cache is not None
    if cache is None:
        cache = model.allocate_cache(input_ids.shape[0], max_seqlen=input_ids.shape[1] + max_new_tokens)
    history = input_ids
    if attention_mask is not None:
        _check_attention_mask(model, attention_mask, input_ids, cache)
        # Pads must not count as "already seen" for the repetition penalty: stand each pad in
        # for the row's last prompt token (always real with left padding), which it already has.
        history = torch.where(attention_mask.bool(), history, history[:, -1:])
    sampler = Sampler(params, history, seed, eos_token_id)
    logits = prefill(model, input_ids, cache, attention_mask)
    if max_new_tokens == 0:
        return
    first = sampler(logits[:, : model.vocab_size])
    yield from decode_n_tokens(model, first, cache, max_new_tokens, sampler, feed_last=keep_cache)


def generate(model, input_ids: Tensor, max_new_tokens: int = 64, **sampling) -> Tensor:
    """(b, l) prompt -> (b, l + new) tokens; stops early once every row produced eos.
    Options: see `stream` (sampling, eos_token_id, seed, attention_mask, cache)."""
    new = list(stream(model, input_ids, max_new_tokens=max_new_tokens, **sampling))
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


