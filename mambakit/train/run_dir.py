"""The run folder of `train(out_dir=...)`: one process at a time, never someone else's files.

out/.mambakit-run.lock  flock'ed for the whole run; holds the owner's pid and host
out/run.json            marks the folder as a mambakit training run (written at its first start)
out/metrics.jsonl, out/checkpoints/, out/data/ (token cache), and the final model

Why flock: the kernel drops the lock when its process dies, kill -9 included, so a crashed run
never blocks the next one. The pid in the file names the owner in the refusal; if that pid is
gone yet the lock is still held (a forked child kept the descriptor), the lock is stale and is
taken over by replacing the file. Nothing here waits: a held lock is refused at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

from mambakit.io.atomic import atomic_write_text

LOCK_NAME = ".mambakit-run.lock"
MARKER_NAME = "run.json"
MARKER = {"format": "mambakit-run", "version": 1}
# Files a run of ours writes; a folder holding anything else (and no run.json) is not ours.
RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "data")

_held: dict[Path, int] = {}  # resolved folder -> lock fd, so nested open_run calls re-enter


class RunDirError(ValueError):
    """The --out folder cannot be used for this run (someone else's files, or in use)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> tuple[int, str]:
    try:
        pid, host = path.read_text(encoding="utf-8").split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return 0, ""


def _acquire(out: Path) -> int:
    path = out / LOCK_NAME
    for attempt in range(2):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, host = _owner(path)
            if attempt == 0 and host == socket.gethostname() and pid > 0 and not _alive(pid):
                path.unlink(missing_ok=True)  # stale: its owner is dead; a new file, a new lock
                continue
            raise RunDirError(f"{out} is in use by another training run (pid {pid or '?'}"
                              f"{'' if host in ('', socket.gethostname()) else ' on ' + host}); "
                              f"wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return fd
    raise AssertionError("unreachable")


def _check_ours(out: Path) -> None:
    """Refuse a non-empty folder that is not a training run of ours (say an exported model)."""
    if (out / MARKER_NAME).is_file() or any((out / name).exists() for name in RUN_ENTRIES[:2]):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(f"--out {out} is not empty and is not a mambakit training run (it holds "
                          f"{shown}); choose a new or empty folder")


def clean_orphans(out: Path) -> list[Path]:
    """Remove what a killed run left half-written: temp files (.NAME.*.tmp) beside the final
    model, in checkpoints/ and data/, and checkpoint temp folders (.step-*). Called with the lock
    held, so no live writer owns them."""
    removed = []
    for folder in (out, out / "checkpoints", out / "data"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            temp_file = p.name.startswith(".") and p.name.endswith(".tmp")
            temp_ckpt = p.name.startswith(".step-") and p.is_dir()
            if temp_ckpt:
                shutil.rmtree(p)
            elif temp_file:
                p.unlink()
            else:
                continue
            removed.append(p)
    return removed


@contextlib.contextmanager
def open_run(out: str | os.PathLike) -> Iterator[Path]:
    """Hold `out` for a training run: create it if needed, refuse it if it holds someone else's
    files or another run holds it, and clean what a killed run left half-written. Re-entrant in one
    process. A folder this call created is removed again if the run fails before its first
    checkpoint, so a rejected command leaves nothing behind."""
    out = Path(out)
    key = out.resolve()
    if key in _held:
        yield out
        return
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"--out {out}: cannot create the run directory ({e.strerror})") from None
    try:
        fd = _acquire(out)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    _held[key] = fd
    try:
        _check_ours(out)
        clean_orphans(out)
        if not (out / MARKER_NAME).is_file():
            atomic_write_text(out / MARKER_NAME, json.dumps(MARKER) + "\n")
        yield out
    except BaseException:
        if created and not any((out / "checkpoints").glob("step-*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        del _held[key]
        os.close(fd)  # releases the flock
