"""Where documents come from: the embedded default corpus, text files, folders, and .jsonl.

Documents stream one at a time (a corpus never has to fit in memory). Each carries a stable key
(a relative path, or path:line for .jsonl); the train/val split is a hash of that key, the same
rule the default corpus uses, so whole documents stay on one side.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from mambakit.data.corpus import default_corpus_files, is_val_key, stdlib_root


@dataclass
class Document:
    key: str
    text: str
    is_val: bool


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise ValueError(f"--data {path}: folder holds no files")
        return files
    raise FileNotFoundError(f"--data {path}: no such file or folder")


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{n}: no string field {text_field!r} "
                                 f"(choose the field with --text-field)")
            yield n, record[text_field]


def _user_documents(root: Path, text_field: str) -> Iterator[Document]:
    for path in _files_under(root):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        if path.suffix == ".jsonl":
            for n, text in _jsonl_texts(path, text_field):
                yield Document(f"{rel}:{n}", text, is_val_key(f"{rel}:{n}"))
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:  # binary files (images, archives) are not text
            continue
        yield Document(rel, data.decode("utf-8", errors="replace"), is_val_key(rel))


def _default_documents() -> Iterator[Document]:
    root = stdlib_root()
    for split in ("train", "val"):
        for path in default_corpus_files(split):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            yield Document(path.relative_to(root).as_posix(), text, split == "val")


def iter_documents(sources: Optional[Sequence[str | os.PathLike]] = None, text_field: str = "text",
                   max_bytes: Optional[int] = None) -> Iterator[Document]:
    """Documents of `sources` (None: the default corpus). `max_bytes` caps the training text;
    validation text is capped at a tenth of it (at least 64 KiB)."""
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if sources is None:
        docs: Iterable[Document] = _default_documents()
    else:
        docs = (d for s in sources for d in _user_documents(Path(s), text_field))
    budget = {False: max_bytes, True: None if max_bytes is None else max(max_bytes // 10, 1 << 16)}
    for doc in docs:
        left = budget[doc.is_val]
        if left is not None:
            if left <= 0:
                if all(b is not None and b <= 0 for b in budget.values()):
                    return
                continue
            data = doc.text.encode("utf-8")
            if len(data) > left:
                doc.text = data[:left].decode("utf-8", errors="ignore")
            budget[doc.is_val] = left - len(data)
        if doc.text:
            yield doc


def iter_texts(sources: Optional[Sequence[str | os.PathLike]] = None, text_field: str = "text",
               max_bytes: Optional[int] = None, split: Optional[str] = None) -> Iterator[str]:
    """Texts of the documents of `sources` in `split` ("train", "val", or None for both)."""
    if split not in (None, "train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
    return (d.text for d in iter_documents(sources, text_field, max_bytes)
            if split is None or d.is_val == (split == "val"))
