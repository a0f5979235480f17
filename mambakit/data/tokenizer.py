"""Byte-level tokenizer: ids 0..255 are bytes, 256 marks a document boundary (eos)."""
from __future__ import annotations

from typing import Iterable


class ByteTokenizer:
    vocab_size = 257
    eos_token_id = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def bytes_per_token(self, ids) -> float:
        """Bytes per token of a tokenized text, for converting loss to bits/byte (1 for bytes)."""
        return 1.0
