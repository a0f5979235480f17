"""The run folder: one training process at a time, stale locks taken over, never a hang."""
import os
import subprocess
import sys

import pytest

from mambakit.train.run_dir import LOCK_NAME, RunDirError, open_run

HOLD = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_open_run_is_reentrant_in_the_owning_process(tmp_path):
    with open_run(tmp_path):
        with open_run(tmp_path):
            pass
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            with open_run(tmp_path):
                pass
    finally:
        holder.kill()   # kill -9: the kernel drops its flock, its pid stays in the file
        holder.wait(timeout=60)
    with open_run(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_lock_still_held_by_a_dead_owner_is_stale_and_replaced(tmp_path):
    """A forked child can keep the descriptor (and the flock) after the owner died: the pid in the
    file is then dead and the lock is taken over by replacing the file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, timeout=60)
    import fcntl
    import socket

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # held by "the child", on behalf of a dead pid
        os.write(fd, f"{dead.stdout.strip()} {socket.gethostname()}\n".encode())
        with open_run(tmp_path):
            pass
    finally:
        os.close(fd)


def test_foreign_folder_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"not empty and is not a mambakit training run \(it holds notes.txt\)"):
        with open_run(tmp_path):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "notes.txt"]


def test_a_folder_created_for_a_failed_run_is_removed(tmp_path):
    with pytest.raises(ValueError, match="no such model"):
        with open_run(tmp_path / "new"):
            raise ValueError("no such model")
    assert not (tmp_path / "new").exists()
