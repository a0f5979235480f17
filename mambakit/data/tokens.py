"""Token files: a flat uint16/uint32 `.bin` read through `numpy.memmap`, plus a small JSON header.

`prepare` streams documents through a tokenizer straight to disk (train.bin / val.bin), so a
corpus larger than RAM trains without ever being loaded whole. Layout: `doc eos doc eos ...`.
The `.bin` files are renamed into place only when complete, and the header is written last, so a
half-prepared folder is never mistaken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mambakit.data.sources import iter_documents
from mambakit.data.tokenizer import encode_array, token_byte_lengths, tokenizer_fingerprint
from mambakit.io.atomic import atomic_write_text, default_permissions, disk_full

FORMAT = "mambakit-tokens"
SPLITS = ("train", "val")


@dataclass
class TokenDataset:
    """A 1-D token array (often a memmap) with what evaluation needs to count bytes."""

    tokens: np.ndarray                  # (n,) uint16 / uint32 / int64
    eos_token_id: Optional[int]
    byte_lengths: torch.Tensor          # (vocab,) bytes of text per token id
    source_key: Optional[str] = None    # identifies the tokens without reading them (prepared files)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def fingerprint(self) -> str:
        """A short id of these tokens: a resumed run checks it is training on the same data."""
        if self.source_key is not None:
            return self.source_key
        return hashlib.sha256(np.ascontiguousarray(self.tokens).tobytes()).hexdigest()[:16]

    @classmethod
    def from_tensor(cls, tokens: torch.Tensor, tokenizer) -> "TokenDataset":
        return cls(tokens.numpy(), tokenizer.eos_token_id, token_byte_lengths(tokenizer))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class _TokenWriter:
    """Appends token arrays to a temp file beside `path`; `commit` fsyncs and renames it."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.n_tokens, self.n_documents = path, dtype, 0, 0
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.file = os.fdopen(fd, "wb")

    def write(self, ids: np.ndarray) -> None:
        self.file.write(ids.astype(self.dtype).tobytes())
        self.n_tokens += len(ids)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        default_permissions(self.tmp, 0o666)  # mkstemp's 0600 would make only these files private
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _move_tail(src: _TokenWriter, dst: _TokenWriter, fraction: float = 0.05) -> None:
    """A corpus with too few documents for a hash split: the tail of train becomes val."""
    src.file.flush()
    k = max(1, int(src.n_tokens * fraction))
    tail = np.memmap(src.tmp, dtype=src.dtype, mode="r")[src.n_tokens - k:].copy()
    dst.write(tail)
    src.file.truncate((src.n_tokens - k) * src.dtype.itemsize)
    src.file.seek(0, os.SEEK_END)
    src.n_tokens -= k


def _header(directory: Path, split: str) -> Optional[dict]:
    try:
        return json.loads((directory / f"{split}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stamp(sources: Optional[Sequence[str]]) -> Optional[list]:
    """Size and mtime of every file the sources name, so editing the data re-tokenizes it."""
    if sources is None:
        return None
    stamp = []
    for source in map(Path, sources):
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return stamp


def prepare(out_dir: str | os.PathLike, tokenizer, sources: Optional[Sequence[str]] = None,
            text_field: str = "text", max_bytes: Optional[int] = None) -> Path:
    """Tokenize `sources` (None: the default corpus) into out_dir/{train,val}.{bin,json}.

    Reuses an existing preparation of the same sources, tokenizer and byte cap.
    """
    out = Path(out_dir)
    created = not out.exists()   # removed again if preparing fails: a rejected run leaves nothing
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": 1, "tokenizer": tokenizer_fingerprint(tokenizer),
            "vocab_size": tokenizer.vocab_size, "eos_token_id": tokenizer.eos_token_id,
            "sources": None if sources is None else [str(Path(s).resolve()) for s in sources],
            "text_field": text_field, "max_bytes": max_bytes, "stamp": _stamp(sources)}
    headers = [_header(out, s) for s in SPLITS]
    if all(h is not None and {k: h.get(k) for k in meta} == meta for h in headers):
        return out
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _TokenWriter(out / f"{s}.bin", dtype) for s in SPLITS}
    eos = None if tokenizer.eos_token_id is None else np.array([tokenizer.eos_token_id])
    try:
        for doc in iter_documents(sources, text_field, max_bytes):
            w = writers["val" if doc.is_val else "train"]
            w.write(encode_array(tokenizer, doc.text))
            if eos is not None:
                w.write(eos)
            w.n_documents += 1
        if writers["train"].n_tokens < 2:
            raise ValueError(f"{'the default corpus' if sources is None else ', '.join(map(str, sources))}: "
                             "no text found")
        if writers["val"].n_tokens == 0:
            _move_tail(writers["train"], writers["val"])
        for w in writers.values():
            w.commit()
    except BaseException as e:
        for w in writers.values():
            w.abort()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        full = disk_full(out / "train.bin", e)
        if full is not None:
            raise full from None
        raise
    for split, w in writers.items():
        atomic_write_text(out / f"{split}.json", json.dumps(
            {**meta, "dtype": dtype.name, "n_tokens": w.n_tokens, "n_documents": w.n_documents},
            indent=2) + "\n")
    return out


def open_tokens(directory: str | os.PathLike, split: str, tokenizer) -> TokenDataset:
    """Memory-map out_dir/{split}.bin after checking its header against `tokenizer`."""
    directory = Path(directory)
    header = _header(directory, split)
    if header is None or header.get("format") != FORMAT:
        raise ValueError(f"{directory}: no prepared {split} split ({split}.json missing or corrupt)")
    if header["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"{directory}/{split}.bin was tokenized with a different tokenizer "
                         f"({header['tokenizer']}, not {tokenizer_fingerprint(tokenizer)})")
    path = directory / f"{split}.bin"
    dtype = np.dtype(header["dtype"])
    size = path.stat().st_size if path.exists() else -1
    if size != header["n_tokens"] * dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes, but its header promises {header['n_tokens']} "
                         f"{dtype.name} tokens (truncated or replaced?)")
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(header["n_tokens"],))
    key = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]
    return TokenDataset(tokens, header["eos_token_id"], token_byte_lengths(tokenizer), key)


def is_prepared(directory: str | os.PathLike) -> bool:
    return all((Path(directory) / f"{s}.json").is_file() for s in SPLITS)


def load_splits(tokenizer, data: Optional[str | os.PathLike], cache_dir: str | os.PathLike,
                text_field: str = "text",
                max_bytes: Optional[int] = None) -> tuple[TokenDataset, TokenDataset]:
    """(train, val) token datasets of `data`: a prepared folder is opened as is; text files, folders
    or .jsonl (None: the default corpus) are first tokenized into `cache_dir`."""
    if data is not None and is_prepared(data):
        directory = Path(data)
    else:
        directory = prepare(cache_dir, tokenizer, None if data is None else [data], text_field, max_bytes)
    return open_tokens(directory, "train", tokenizer), open_tokens(directory, "val", tokenizer)
