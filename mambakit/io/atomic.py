"""Atomic file writes: temp file in the same folder + fsync + rename, so a crash mid-write never
leaves a half-written checkpoint where a good one was."""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# How writers report a full disk or a file-size quota: OSError errnos, and the texts of
# safetensors' Rust error ("os error 28") and torch.save's stream writer ("file write failed").
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_TEXT = re.compile(r"os error (28|122|27)\b|No space left|Disk quota|File too large|"
                       r"file write failed|unexpected pos")


class DiskFullError(OSError):
    """A write failed for lack of space (or a file-size limit); nothing was replaced."""

    def __str__(self) -> str:
        return self.strerror


def disk_full(path: str | os.PathLike, exc: BaseException) -> DiskFullError | None:
    """The one-line error for `exc` if it means the disk (or a quota) is full, else None."""
    full = (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS) or bool(FULL_TEXT.search(str(exc)))
    if not full:
        return None
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left to write {path} ({free}); nothing was "
                                       f"replaced — free some space and run it again")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` then atomically move the result to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        default_permissions(tmp, 0o666)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = disk_full(path, e)
        if full is not None:
            raise full from None
        raise
    _fsync_dir(path.parent)


def default_permissions(path: str | os.PathLike, base: int) -> None:
    """chmod `path` to `base` less the umask, what open() (0o666) or mkdir() (0o777) would give:
    mkstemp and mkdtemp make private 0600 files and 0700 folders."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, base & ~umask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
