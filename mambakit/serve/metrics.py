"""Counters and latency histograms in Prometheus' text exposition format (no client library:
the format is a few lines of text per metric). Names are prefixed `mambakit_`."""
from __future__ import annotations

import bisect
import threading
from typing import Mapping

# Seconds: from a fast decode step (~1 ms, tiny models) to a long prefill.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HELP = {
    "requests_total": "requests accepted into the queue",
    "requests_finished_total": "requests whose every choice finished",
    "requests_rejected_total": "requests refused because the queue was full (429)",
    "errors_total": "engine steps that failed (their requests got an error)",
    "prompt_tokens_total": "prompt tokens of accepted requests",
    "prefill_tokens_total": "prompt tokens actually run through the model (cache hits skip the rest)",
    "completion_tokens_total": "tokens sampled",
    "state_cache_hits_total": "prompts that started from a cached prefix state",
    "state_cache_misses_total": "prompts that found no cached prefix state",
    "queue_depth": "requests waiting for a batch slot",
    "batch_size": "rows in the running decode batch",
    "live_states": "sequences holding a state (decoding or prefilling)",
    "state_cache_entries": "prefix states in the cache",
    "state_cache_bytes": "bytes held by the prefix-state cache",
    "state_bytes_per_sequence": "bytes of one sequence's recurrent state",
    "time_to_first_token_seconds": "from submission to the first sampled token",
    "inter_token_latency_seconds": "between consecutive tokens of one sequence",
    "request_seconds": "from submission to the last token",
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, float] = {}
        self.histograms: dict[str, list] = {}       # name -> [bucket counts, sum, count]

    def inc(self, name: str, by: float = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + by

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            h = self.histograms.setdefault(name, [[0] * len(BUCKETS), 0.0, 0])
            i = bisect.bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                h[0][i] += 1
            h[1] += seconds
            h[2] += 1

    def render(self, gauges: Mapping[str, float]) -> str:
        lines = []

        def head(name: str, kind: str) -> None:
            lines.append(f"# HELP mambakit_{name} {HELP.get(name, name)}")
            lines.append(f"# TYPE mambakit_{name} {kind}")

        with self._lock:
            for name in sorted(set(self.counters) | {n for n in HELP if n.endswith("_total")}):
                head(name, "counter")
                lines.append(f"mambakit_{name} {self.counters.get(name, 0):g}")
            for name, value in sorted(gauges.items()):
                head(name, "gauge")
                lines.append(f"mambakit_{name} {value:g}")
            for name, (counts, total, count) in sorted(self.histograms.items()):
                head(name, "histogram")
                cumulative = 0
                for le, c in zip(BUCKETS, counts):
                    cumulative += c
                    lines.append(f'mambakit_{name}_bucket{{le="{le:g}"}} {cumulative}')
                lines.append(f'mambakit_{name}_bucket{{le="+Inf"}} {count}')
                lines.append(f"mambakit_{name}_sum {total:.6f}")
                lines.append(f"mambakit_{name}_count {count}")
        return "\n".join(lines) + "\n"
