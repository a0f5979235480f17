"""Peak resident memory of a block of code, sampled from a background thread.

`resource.getrusage` only knows the process-wide maximum, which never comes down; comparing models
trained one after another in the same process needs the peak *above the level at entry*.
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import threading


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the process-wide maximum is all we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Hand memory freed by earlier work back to the OS (glibc keeps it resident otherwise), so
    the next block's growth above the entry level is visible rather than absorbed by old pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is just less sharp
        pass


class PeakMemory:
    """with PeakMemory() as m: ...;  m.peak_bytes (absolute), m.delta_bytes (above entry)."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __enter__(self) -> "PeakMemory":
        release_free_memory()
        self.start_bytes = self.peak_bytes = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    @property
    def delta_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes
