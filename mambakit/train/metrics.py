"""metrics.jsonl: one JSON record per optimizer step (and one per final evaluation), kept in step
with the checkpoints: a resumed run first cuts the file back to the checkpoint's step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from mambakit.io.atomic import atomic_write_text

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """The records of steps <= `up_to_step`, less the final evaluation at `up_to_step` itself (a
    resumed run evaluates again when it ends, so keeping it would log it twice)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        final = "loss" not in record
        if record["step"] < up_to_step or (record["step"] == up_to_step and not final):
            records.append(record)
    return records


class MetricsLog:
    """The run's history in memory, mirrored to `path` (None: memory only, e.g. rank > 0)."""

    def __init__(self, path: Optional[Path], history: list[dict]):
        self.history = list(history)
        self.file = None
        if path is not None:
            # Rewritten atomically, then appended to: a crash never loses the earlier lines.
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))
            self.file = open(path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
