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

Files work for every `RecurrentCache` (Mamba, Mamba-2, S4, S4D); their format is in
`mambakit.formats.state`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

# The file format lives with the other formats; this is its public path.
from mambakit.formats.state import load_state, save_state

__all__ = ["snapshot", "restore", "select", "fork", "concat", "state_nbytes", "save_state", "load_state"]


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
