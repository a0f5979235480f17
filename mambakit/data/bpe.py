"""Byte-level BPE trained with the `tokenizers` library.

ByteLevel pre-tokenizer *and* decoder: every string maps to bytes first (so nothing is ever
out-of-vocabulary) and decoding maps them back, so decode(encode(text)) == text exactly.
"""
from __future__ import annotations

from typing import Iterable

from mambakit.data.tokenizer import HFTokenizer

EOS_TOKEN = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE tokenizer on an iterable of documents; eos is `<|endoftext|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if not isinstance(vocab_size, int) or vocab_size < len(alphabet) + 1:
        raise ValueError(f"BPE vocab_size must be an int >= {len(alphabet) + 1} (256 bytes + eos), "
                         f"got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS_TOKEN], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, eos_token=EOS_TOKEN)

