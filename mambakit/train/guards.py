"""What stops a training run, each on its own: Ctrl-C (at a step boundary), a time budget, and
non-finite numbers (loss, gradients, or the weights an update produced)."""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Optional

import torch


class StopOnSignal:
    """First Ctrl-C asks the loop to stop at the next step boundary (a consistent state to save);
    a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class TimeBudget:
    """`spent()` once `seconds` have passed since construction (never, for None)."""

    def __init__(self, seconds: Optional[float]):
        self.seconds, self.started = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of parameters holding a nan or inf (this rank's shard under FSDP)."""
    bad = []
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p   # FSDP2 DTensor
        if not bool(torch.isfinite(local.detach()).all()):
            bad.append(name)
    return bad


def finite_step(loss: float, grad_norm: float) -> bool:
    return math.isfinite(loss) and math.isfinite(grad_norm)


def nonfinite_step(loss: float, grad_norm: float, step: int, kept: str) -> FloatingPointError:
    """The error for a non-finite loss or gradient norm (found before the update)."""
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
    return FloatingPointError(f"{what} at step {step}; stopped before updating the weights "
                              f"({kept}); try a lower --lr")


def weights_went_nonfinite(bad: list[str], step: int, kept: str) -> FloatingPointError:
    """The error for an update that left weights non-finite (they are never saved)."""
    shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return FloatingPointError(f"the update of step {step} made weights non-finite ({shown}); they "
                              f"were not saved ({kept}); try a lower --lr")
