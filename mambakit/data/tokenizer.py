"""Tokenizers with one small surface: encode, decode, vocab_size, eos_token_id, save.

`ByteTokenizer` (the default) needs nothing; `HFTokenizer` wraps a `tokenizers` tokenizer.json
(BPE trained by us, or the one shipped beside a transformers checkpoint). `load_tokenizer(dir)`
picks whichever a directory carries; `check_tokenizer_fits` refuses a tokenizer whose ids do not
match a model's vocabulary (a checkpoint without its tokenizer.json would otherwise get bytes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """ids 0..255 are bytes; 256 marks a document boundary (eos)."""

    vocab_size = 257
    eos_token_id = 256
    kind = "bytes"

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        """Nothing to write: a directory without tokenizer.json means byte-level."""


class HFTokenizer:
    """A `tokenizers.Tokenizer` (tokenizer.json) behind the same surface as ByteTokenizer."""

    kind = "tokenizer.json"

    def __init__(self, tokenizer, eos_token: Optional[str] = None):
        self.tokenizer = tokenizer
        candidates = [eos_token] if eos_token else ["<|endoftext|>", "</s>", "<eos>", "<|eos|>"]
        self.eos_token_id = next((tokenizer.token_to_id(t) for t in candidates
                                  if t and tokenizer.token_to_id(t) is not None), None)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> None:
        from mambakit.io.atomic import atomic_write_text

        atomic_write_text(Path(directory) / TOKENIZER_FILE, self.tokenizer.to_str())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "HFTokenizer":
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None


def load_tokenizer(directory: str | os.PathLike | None = None):
    """The tokenizer stored in `directory` (tokenizer.json), else byte-level."""
    if directory is not None:
        path = Path(directory)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        if path.is_file():
            return HFTokenizer.from_file(path)
    return ByteTokenizer()


def check_tokenizer_fits(tokenizer, model) -> None:
    """Raise ValueError unless `tokenizer` plausibly belongs to `model`.

    Its ids must all be rows of the model, and the model must not be much larger: checkpoints pad
    the vocabulary (mamba_ssm to a multiple of 8, transformers' 50280 for a 50277-token tokenizer),
    so up to 1% more, rounded up to a multiple of 8, is allowed. Anything beyond that (say the byte
    tokenizer, 257 ids, with a 50280-row model) would read text as the wrong ids and print garbage.
    """
    from mambakit.config import pad_to_multiple

    have, want = tokenizer.vocab_size, model.vocab_size
    if have <= want <= pad_to_multiple(have + have // 100, 8):
        return
    raise ValueError(f"the tokenizer ({tokenizer.kind}, {have} tokens) does not fit this model "
                     f"(vocab_size {want}); pass --tokenizer PATH (a tokenizer.json, or a folder "
                     f"holding one) with the tokenizer the model was trained with")


def tokenizer_fingerprint(tokenizer) -> str:
    """A short id that changes whenever the id <-> text mapping does (cached token files use it)."""
    if isinstance(tokenizer, ByteTokenizer):
        return "bytes"
    import hashlib

    return hashlib.sha256(tokenizer.tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def token_byte_lengths(tokenizer):
    """(vocab_size,) int64 tensor: the bytes of text each token id stands for; special tokens and
    eos stand for none. bits/byte = total nats / ln 2 / sum of these over the predicted tokens."""
    import json

    import torch

    if isinstance(tokenizer, ByteTokenizer):
        lengths = torch.ones(tokenizer.vocab_size, dtype=torch.long)
        lengths[tokenizer.eos_token_id] = 0
        return lengths
    hf = tokenizer.tokenizer
    decoder = json.loads(hf.to_str()).get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel"
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    for i in range(tokenizer.vocab_size):
        if i in special:
            continue
        if byte_level:  # the ByteLevel alphabet spells every byte as exactly one character
            lengths[i] = len(hf.id_to_token(i) or "")
        else:
            lengths[i] = len(hf.decode([i], skip_special_tokens=True).encode("utf-8"))
    return lengths


def encode_array(tokenizer, text: str):
    """Token ids of `text` as a numpy int64 array (fast path for bytes)."""
    import numpy as np

    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)
