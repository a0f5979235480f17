"""The embedded default corpus: the Python standard library's own source, found at run time.

Every machine with Python has it, so demos and tests need no download. The train/val split is by
a hash of each file's path relative to the stdlib root: deterministic, and whole files stay on one
side so validation text is never seen in training.
"""
from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

VAL_FRACTION_PER_MILLE = 50  # 5% of files


def is_val_key(key: str) -> bool:
    """Whether the document with this stable key (a relative path, path:line) is validation."""
    return zlib.crc32(key.encode()) % 1000 < VAL_FRACTION_PER_MILLE


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
        if is_val_key(rel) == (split == "val"):
            files.append(path)
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return files
