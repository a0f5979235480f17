"""What the synthetic task generators share: the ignore label, argument checks, seeded generators."""
from __future__ import annotations

from typing import Optional

import torch

from mambakit.checks import require_int  # noqa: F401  (re-exported for the task modules)

IGNORE_INDEX = -100     # targets at unscored positions; torch's cross_entropy default ignore_index


def seeded(seed: Optional[int]) -> torch.Generator:
    """A CPU generator: seeded when `seed` is given, so the same seed gives the same batches
    on every machine (data is generated on the CPU and moved to the model's device)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
