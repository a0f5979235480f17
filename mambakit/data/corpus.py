"""The embedded default corpus: the Python standard library's own source, found at run time.

Every machine with Python has it, so demos and tests need no download. The train/val split is by
a hash of each file's path relative to the stdlib root: deterministic, and whole files stay on one
side so validation text is never seen in training.
"""
from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import torch

VAL_FRACTION_PER_MILLE = 50  # 5% of files


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files(split: str = "train") -> list[Path]:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")) or "/site-packages/" in rel:
            continue
        is_val = zlib.crc32(rel.encode()) % 1000 < VAL_FRACTION_PER_MILLE
        if is_val == (split == "val"):
            files.append(path)
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return files


def load_default_corpus(split: str = "train", max_bytes: int | None = None,
                        eos_token_id: int = 256) -> torch.Tensor:
    """Byte-level token ids (int64) of the stdlib corpus, documents separated by eos."""
    chunks, total = [], 0
    for path in default_corpus_files(split):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data:
            continue
        chunks.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).long())
        chunks.append(torch.tensor([eos_token_id]))
        total += len(data) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    tokens = torch.cat(chunks)
    return tokens if max_bytes is None else tokens[:max_bytes]
