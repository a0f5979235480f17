"""Text on top of the token steps: tokens -> printable pieces, stop strings, batched text streams.

Decoding is incremental: each new token costs work bounded by the last couple of tokens and the
stop strings' lengths, never by the length of the output so far.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

from mambakit.generation.steps import pad_prompts, stream

MAX_PENDING = 16   # tokens a trailing U+FFFD may wait for the rest of its character (see _decode_new)


class TextDecoder:
    """Turns one row's growing token list into text pieces that are safe to print at once: never
    half a UTF-8 character (a trailing U+FFFD waits for its remaining bytes), never text that a
    stop string may still claim. `text` is the completion, cut before the first stop string.

    Tokens are decoded in a sliding window (as vLLM's incremental detokenizer does): the previous
    piece's tokens give the tokenizer its left context (a SentencePiece word's leading space), and
    the window moves on once its text no longer ends in U+FFFD. Text that might begin a stop
    string is held back in `_pending`; a stop string can only end in new text, so only the pending
    text is searched.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), eos_token_id: Optional[int | Sequence[int]] = None):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.ids: list[int] = []
        self.finished = False
        self._shown: list[str] = []        # pieces returned so far
        self._pending = ""                 # decoded, not yet shown: may start a stop string
        self._prefix = self._read = 0      # window: ids[_prefix:_read] is context already decoded

    @property
    def text(self) -> str:
        return "".join(self._shown) + self._pending

    def push(self, token: int) -> str:
        """Add a token; return the text that became safe to show (often "")."""
        if self.finished:
            return ""
        if token in self.eos:
            return self.flush()
        self.ids.append(token)
        new = self._decode_new(final=False)
        if not new:
            return ""
        self._pending += new
        hits = [i for i in (self._pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._pending = self._pending[:min(hits)]
            return self.flush()
        held = max((k for s in self.stop for k in range(1, len(s)) if self._pending.endswith(s[:k])),
                   default=0)
        return self._emit(len(self._pending) - held)

    def flush(self) -> str:
        """The row is over: return whatever was held back."""
        if not self.finished:
            self.finished = True
            self._pending += self._decode_new(final=True)
        return self._emit(len(self._pending))

    def _decode_new(self, final: bool) -> str:
        """Text of the tokens after the window's context, or "" while it ends mid-character."""
        context = self.tokenizer.decode(self.ids[self._prefix:self._read])
        end = len(self.ids)
        full = self.tokenizer.decode(self.ids[self._prefix:end])
        if full.endswith("\ufffd") and not final:
            if end - self._read < MAX_PENDING:
                return ""
            # Undecodable output rather than a character in flight (which would have started in
            # the last 3 tokens: UTF-8 needs at most 4 bytes, a token carries one or more): all
            # before those is final, so the window moves on instead of growing with the garbage.
            end -= 3
            full = self.tokenizer.decode(self.ids[self._prefix:end])
        if len(full) < len(context):
            return ""
        self._prefix, self._read = self._read, end
        return full[len(context):]

    def _emit(self, end: int) -> str:
        piece, self._pending = self._pending[:end], self._pending[end:]
        if piece:
            self._shown.append(piece)
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
