"""Generation as a few free functions (after gpt-fast): pad_prompts, sample, stream, generate,
and the text layer on top (stream_text / generate_text: safe UTF-8 pieces, stop strings).

The model's `forward(ids, cache=...)` is the prefill (parallel path, fills the cache) and
`step(tokens, cache)` the O(1)-per-token decode; sampling is model-agnostic.

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
    logits = model(input_ids[:, :first], cache=cache, **kwargs)[:, -1]
    for start in range(first, l, chunk_size):
        logits = model(input_ids[:, start:start + chunk_size], cache=cache)[:, -1]
    return logits


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
    keep_cache = cache is not None
    if cache is None:
        cache = model.allocate_cache(b, max_seqlen=input_ids.shape[1] + max_new_tokens)
    history = input_ids.long()
    kwargs = {}
    if attention_mask is not None:
        _check_attention_mask(model, attention_mask, input_ids, cache)
        kwargs["attention_mask"] = attention_mask
        # Pads must not count as "already seen" for the repetition penalty: stand each pad in
        # for the row's last prompt token (always real with left padding), which it already has.
        history = torch.where(attention_mask.bool(), history, history[:, -1:])
    logits = prefill(model, input_ids, cache, kwargs.get("attention_mask"))
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        logits = logits[:, : model.vocab_size]           # never sample vocab padding
        scores = process_logits(logits, history, temperature, top_k, top_p, min_p, repetition_penalty)
        token = sample(scores, temperature, generator)
        if eos.numel():
            token = torch.where(done, eos[0], token)
            done |= torch.isin(token, eos)
        history = torch.cat([history, token[:, None]], dim=1)
        last = bool(done.all()) or i == max_new_tokens - 1
        if keep_cache or not last:  # the final step is only needed by a caller who keeps the cache
            logits = model.step(token, cache)                                      # decode
        yield token
        if last:
            return


def generate(model, input_ids: Tensor, max_new_tokens: int = 64, **sampling) -> Tensor:
    """(b, l) prompt -> (b, l + new) tokens; stops early once every row produced eos.
    Options: see `stream` (sampling, eos_token_id, seed, attention_mask, cache)."""
    new = list(stream(model, input_ids, max_new_tokens=max_new_tokens, **sampling))
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


# ----------------------------------------------------------------------------------------------
# Text: tokens -> printable pieces, stop strings.
# ----------------------------------------------------------------------------------------------
class TextDecoder:
    """Turns one row's growing token list into text pieces that are safe to print at once: never
    half a UTF-8 character (a trailing U+FFFD waits for its remaining bytes), never text that a
    stop string may still claim. `text` is the completion, cut before the first stop string."""

    def __init__(self, tokenizer, stop: Sequence[str] = (), eos_token_id: Optional[int | Sequence[int]] = None):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.ids: list[int] = []
        self.text, self.shown, self.finished = "", 0, False

    def push(self, token: int) -> str:
        """Add a token; return the text that became safe to show (often "")."""
        if self.finished:
            return ""
        if token in self.eos:
            return self.flush()
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self.flush()
        end = len(self.text)
        while end > self.shown and self.text[end - 1] == "\ufffd":
            end -= 1
        end -= max((k for s in self.stop for k in range(1, len(s))
                    if self.text[:end].endswith(s[:k])), default=0)
        return self._emit(end)

    def flush(self) -> str:
        """The row is over: return whatever was held back."""
        self.finished = True
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return piece


class TextStream:
    """Iterator of per-step text pieces, one per prompt ("" when nothing is safe to show yet).

    Prompts of different lengths are batched with left padding. A row ends at eos (default: the
    tokenizer's) or once its text contains a stop string (the stop string is not shown); the
    stream ends when every row has. After iterating, `prompt_ids[i]` and `decoders[i].ids` are
    row i's prompt and generated token ids, `decoders[i].text` its completion.
    """

    def __init__(self, model, tokenizer, prompts: str | Sequence[str], max_new_tokens: int = 64,
                 stop: Sequence[str] = (), **sampling):
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.prompt_ids = [tokenizer.encode(t) for t in texts]
        ids, mask = pad_prompts(self.prompt_ids)
        sampling.setdefault("eos_token_id", tokenizer.eos_token_id)
        self.decoders = [TextDecoder(tokenizer, stop, sampling["eos_token_id"]) for _ in texts]
        self._tokens = stream(model, ids.to(model.device), max_new_tokens=max_new_tokens,
                              attention_mask=mask.to(model.device), **sampling)

    def __iter__(self) -> Iterator[list[str]]:
        for step in self._tokens:
            yield [d.push(t) for d, t in zip(self.decoders, step.tolist())]
            if all(d.finished for d in self.decoders):
                self._tokens.close()  # every row hit eos or a stop string: decode no further
                return
        yield [d.flush() for d in self.decoders]


def stream_text(model, tokenizer, prompts: str | Sequence[str], max_new_tokens: int = 64,
                stop: Sequence[str] = (), **sampling) -> TextStream:
    """Stream decoded text (see TextStream); other options as for `stream`."""
    return TextStream(model, tokenizer, prompts, max_new_tokens, stop, **sampling)


def generate_text(model, tokenizer, prompts: str | Sequence[str], max_new_tokens: int = 64,
                  stop: Sequence[str] = (), **sampling) -> list[str]:
    """The completion of each prompt (a list even for one prompt). Options: see `stream_text`."""
    text = TextStream(model, tokenizer, prompts, max_new_tokens, stop, **sampling)
    for _ in text:
        pass
    return [d.text for d in text.decoders]
