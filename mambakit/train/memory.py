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


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_freed_buffers_to_os(threshold_bytes: int = 1 << 20) -> bool:
    """Have glibc give every allocation of at least `threshold_bytes` its own mapping, handed back
    to the OS when freed. Process-wide; False (and nothing done) where the C library is not glibc.

    Why: glibc starts at a 128 KB threshold but raises it to the size of each mapped block freed
    (up to 32 MB), so after the first step the MB-sized activation buffers of a training step come
    from the heap, where freed blocks stay resident and fragment: a 130M Mamba step at L=512 peaks
    ~300 MB higher for it. Setting the threshold also stops that adjustment. The price is a page
    fault per fresh page of each large buffer, a few % of the step (measured in the report of
    benchmarks/bench_lm.py's training case, which calls this as `mambakit train` does).
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


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
