"""Backend registries: one per op (selective scan, SSD), so every op has one dispatch point.

A backend is a function with the op's reference signature plus `available(device)`, which returns
None when the backend can run on that device or a sentence saying why not. "auto" tries the
backends registered for the device type, best first, and warns once per backend it skips.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an op on these inputs will be differentiated: the fused ops keep what a backward needs
    only then. Decided before an autograd.Function is applied: inside its forward, grad mode is off
    and ctx.needs_input_grad is True for every input that requires grad, even under no_grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclass
class Backend:
    """An implementation of an op. `available(device)` returns None if usable, else why not."""

    name: str
    fn: Callable
    available: Callable[[torch.device], Optional[str]]
    description: str = ""


class BackendRegistry:
    """Backends of one op, keyed by name; `reference` (the spec) is the last resort of "auto"."""

    def __init__(self, op: str, reference: Backend):
        self.op = op
        self.reference = reference.name
        self.backends: dict[str, Backend] = {reference.name: reference}
        # Backends tried by backend="auto", best first, per device type.
        self.auto_order: dict[str, list[str]] = {}
        self.warned: set[str] = set()

    def register(self, backend: Backend, auto_for: tuple[str, ...] = (), priority: int = 0) -> None:
        """Register `backend`; `auto_for` lists device types where "auto" should try it
        (priority 0 = ahead of everything registered for that device so far)."""
        self.backends[backend.name] = backend
        for device_type in auto_for:
            order = self.auto_order.setdefault(device_type, [])
            if backend.name in order:
                order.remove(backend.name)
            order.insert(priority, backend.name)

    def available(self, device: torch.device | str = "cpu") -> dict[str, Optional[str]]:
        """Map every registered backend to None (usable on `device`) or the reason it is not."""
        device = torch.device(device)
        return {name: be.available(device) for name, be in self.backends.items()}

    def resolve(self, backend: str, device: torch.device) -> Backend:
        if backend == "auto":
            for name in self.auto_order.get(device.type, []):
                be = self.backends[name]
                reason = be.available(device)
                if reason is None:
                    return be
                if name not in self.warned:
                    self.warned.add(name)
                    warnings.warn(f"{self.op} backend {name!r} unavailable ({reason}); falling back",
                                  RuntimeWarning, stacklevel=3)
            return self.backends[self.reference]
        if backend not in self.backends:
            raise ValueError(f"unknown {self.op} backend {backend!r}; choose from "
                             f"{['auto', *sorted(self.backends)]}")
        be = self.backends[backend]
        reason = be.available(device)
        if reason is not None:
            raise ValueError(f"{self.op} backend {backend!r} is not available on {device}: {reason}")
        return be
