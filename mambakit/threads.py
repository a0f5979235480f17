"""Thread use that degrades gracefully on a shared machine.

Measured here (2 cores, load average 13-17 from other jobs; `synth selective-copying`, tiny Mamba,
L=256, batch 32): 2 threads took 4.9-6.1 s/step, 1 thread 1.5-1.6 s/step, and 2 threads with
OMP_WAIT_POLICY=PASSIVE 1.0-1.2 s/step. The cause is OpenMP's spin-waiting: with the default
(active) policy a thread that reaches a barrier spins on its core, so when the other thread has
been descheduled by a busy OS, every parallel region of a small op costs a time slice. Passive
waiting sleeps instead. The wait policy is read once, when the OpenMP runtime loads with torch, so
it must be in the environment before torch is imported; after that only the thread count can change.

Policy: a user's OMP_WAIT_POLICY always wins; otherwise, on a machine busier than its cores when
mambakit is imported before torch, waiting is made passive; and `auto_threads()` falls back to one
thread when the machine is busy and waiting is active.
"""
from __future__ import annotations

import os
import sys


def machine_busy() -> bool:
    """True when the 1-minute load average reaches the number of cores."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:                 # no load average on this platform
        return False


def prefer_passive_waiting() -> None:
    """Make OpenMP wait passively on a busy machine, if nobody chose and torch is not loaded yet."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules and machine_busy():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def passive_waiting() -> bool:
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def auto_threads() -> int:
    """Intra-op threads to use now: torch's default, or 1 when spinning threads would fight for a
    busy machine's cores."""
    import torch

    return 1 if machine_busy() and not passive_waiting() else torch.get_num_threads()
