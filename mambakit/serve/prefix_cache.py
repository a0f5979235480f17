"""Prompt-state cache: snapshots of a model's cache keyed by the token prefix they absorbed.

A recurrent model's memory of any prefix is its fixed-size state (a 130M Mamba: 24 layers × 1536
channels × (16 + 3) fp32 ≈ 2.8 MB, whatever the prefix length), so a request whose prompt extends
a stored prefix prefills only the rest. Keys are the prefix's length and a hash chained over its
tokens (h_i = hash((h_{i-1}, token_i)): one O(l) pass gives every prefix's key), confirmed
against the stored tokens on a hit. Entries are evicted least-recently-used once their bytes
pass the budget.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mambakit.state import snapshot, state_nbytes


def prefix_hashes(tokens: Sequence[int]) -> list[int]:
    """hashes[i] identifies tokens[:i + 1]."""
    out, h = [], 0
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


@dataclass
class Entry:
    tokens: tuple[int, ...]
    state: Any            # a b=1 cache (snapshot) after exactly `tokens`
    nbytes: int


class PrefixCache:
    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"the state cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget = budget_bytes
        self.nbytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple[int, int], Entry] = OrderedDict()
        self._lengths: dict[int, int] = {}      # prefix length -> number of entries of that length
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int], hashes: Sequence[int], max_length: int) -> Optional[Entry]:
        """The longest stored prefix of `tokens` no longer than max_length (counted as hit/miss)."""
        with self._lock:
            for n in sorted((n for n in self._lengths if 0 < n <= max_length), reverse=True):
                entry = self._entries.get((n, hashes[n - 1]))
                if entry is not None and entry.tokens == tuple(tokens[:n]):
                    self._entries.move_to_end((n, hashes[n - 1]))
                    self.hits += 1
                    return entry
            self.misses += 1
            return None

    def store(self, tokens: Sequence[int], key_hash: int, cache: Any) -> None:
        """Keep a snapshot of `cache` (b = 1, after exactly `tokens`) unless it is already stored
        or larger than the whole budget."""
        key = (len(tokens), key_hash)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
        nbytes = state_nbytes(cache)
        if nbytes > self.budget:
            return
        entry = Entry(tuple(tokens), snapshot(cache), nbytes)
        with self._lock:
            self._entries[key] = entry
            self._lengths[key[0]] = self._lengths.get(key[0], 0) + 1
            self.nbytes += nbytes
            while self.nbytes > self.budget:
                (n, _), old = self._entries.popitem(last=False)
                self.nbytes -= old.nbytes
                self._lengths[n] -= 1
                if not self._lengths[n]:
                    del self._lengths[n]
