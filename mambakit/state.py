"""The state API: a model's cache as a value — snapshot / restore / fork / select / concat — and
recurrent state on disk (save a model's cache after a prompt, load it later and continue).

Every family's cache (RecurrentCache for Mamba / S4 / S4D and any MixerLM, RNNCache for GRU /
LSTM, TransformerCache's KV cache) has `clone`, `select(rows)`, `concat(caches)` and `tensors()`;
the functions below are written once on top of them:

    snap = snapshot(cache)              # a detached copy (a few hundred kB for a recurrent model)
    ...decode k tokens...; restore(cache, snap)    # rolled back k tokens
    cache = fork(cache, 4)              # one sequence -> 4 rows (best-of-n, parallel sampling)
    cache = select(cache, [0, 2])       # drop finished rows of a running batch
    cache = concat([cache, new_cache])  # admit new sequences into it

A recurrent model's whole memory of a sequence is its cache — for Mamba, per layer the conv
window (b, d_in, k-1) and the SSM state (b, d_in, n), a few hundred kB regardless of context
length — so a long prompt is prefilled once and every later continuation starts from the file:

    cache = model.allocate_cache(1); model(prompt_ids, cache=cache); save_state(cache, "p.state")
    out = model.generate(next_ids, cache=load_state("p.state", model))

Works for every `RecurrentCache` (Mamba, S4, S4D). Stored as safetensors (no pickle): one tensor
per layer and state field (`layers.{i}.conv`, `layers.{i}.ssm`, ...); metadata `seqlen_offset`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch

from safetensors import safe_open
from safetensors.torch import save_file

from mambakit.io.atomic import atomic_write
from mambakit.io.files import CheckpointError, read_safetensors
from mambakit.models.mixer_lm import RecurrentCache

FORMAT = "mambakit-state"


def snapshot(cache: Any) -> Any:
    """A detached copy of `cache`: later steps on either never touch the other."""
    with torch.no_grad():
        return cache.clone()


def restore(cache: Any, snap: Any) -> None:
    """Put `cache` back (in place) into the state `snap` holds; `snap` stays reusable."""
    if type(cache) is not type(snap):
        raise TypeError(f"cannot restore a {type(snap).__name__} into a {type(cache).__name__}")
    copy = snapshot(snap)
    for f in dataclasses.fields(cache):
        setattr(cache, f.name, getattr(copy, f.name))


def select(cache: Any, rows: Sequence[int] | torch.Tensor) -> Any:
    """A new cache of the given rows, in that order (a row may repeat)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    n = cache.batch_size
    if rows.dim() != 1 or (rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n)):
        raise IndexError(f"rows {rows.tolist()} out of range for a cache of {n} rows")
    device = next(iter(cache.tensors().values())).device
    with torch.no_grad():
        return cache.select(rows.to(device))


def fork(cache: Any, n: int) -> Any:
    """Each row repeated n times in place: rows (a, b) -> (a, a, ..., b, b, ...)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fork needs n >= 1, got {n!r}")
    return select(cache, torch.arange(cache.batch_size).repeat_interleave(n))


def concat(caches: Sequence[Any]) -> Any:
    """One cache holding the rows of all `caches` (of one model), in order."""
    caches = list(caches)
    if not caches or len({type(c) for c in caches}) != 1:
        raise ValueError(f"concat needs one or more caches of one type, got {[type(c).__name__ for c in caches]}")
    with torch.no_grad():
        return type(caches[0]).concat(caches)


def state_nbytes(cache: Any) -> int:
    """Bytes the cache's tensors hold (what a snapshot of it costs)."""
    return sum(t.numel() * t.element_size() for t in cache.tensors().values())


def save_state(cache: RecurrentCache, path: str | os.PathLike) -> None:
    """Write `cache` to `path` atomically (a detached copy; the cache itself is untouched)."""
    if not isinstance(cache, RecurrentCache):
        raise TypeError(f"save_state needs a recurrent model's cache, got {type(cache).__name__}")
    tensors = {k: t.detach().contiguous() for k, t in cache.tensors().items()}
    metadata = {"format": FORMAT, "seqlen_offset": str(cache.seqlen_offset)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike, model) -> RecurrentCache:
    """Read a state saved by `save_state` into a cache laid out for `model` (on its device).
    A file that does not fit the model raises CheckpointError naming the tensors."""
    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mambakit state file (format {metadata.get('format')!r})")
    try:
        offset = int(metadata["seqlen_offset"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt state metadata ({e!r})") from None
    first = next(iter(tensors.values()), None)
    template = model.allocate_cache(first.shape[0] if first is not None else 1)
    if not isinstance(template, RecurrentCache):
        raise CheckpointError(f"{type(model).__name__} has no recurrent state to load")
    expected = template.tensors()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [f"{k}: {tuple(tensors[k].shape)} vs model {tuple(t.shape)}"
           for k, t in expected.items() if k in tensors and tensors[k].shape != t.shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing {missing}, "
                              f"unexpected {unexpected}, shape mismatches {bad}")
    layers = [dataclasses.replace(state, **{f.name: tensors[f"layers.{i}.{f.name}"].to(
                  getattr(state, f.name).device) for f in dataclasses.fields(state)})
              for i, state in enumerate(template.layers)]
    return RecurrentCache(layers, offset)
