"""What the synthetic task generators share: the ignore label, argument checks, seeded generators."""
from __future__ import annotations

from typing import Optional

import torch

IGNORE_INDEX = -100     # targets at unscored positions; torch's cross_entropy default ignore_index


def require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def seeded(seed: Optional[int]) -> torch.Generator:
    """A CPU generator: seeded when `seed` is given, so the same seed gives the same batches
    on every machine (data is generated on the CPU and moved to the model's device)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
