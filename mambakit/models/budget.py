"""Equal-size configs: every registered family sized to one parameter budget, so comparisons are fair
by construction. Parameters are counted by building each candidate on the meta device (no memory,
no init cost) — the models themselves are the formula, so the sizing can never drift from them.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch

from mambakit.checks import require_int
from mambakit.config import ConfigBase
from mambakit.models.registry import REGISTRY, config_for, from_config, model_class

# Depth per family when none is given. A Mamba or S4 layer holds about half the parameters of an
# attention + MLP layer, so the Mamba paper pairs 2x the layers with the Transformer's width.
DEFAULT_DEPTH = {"mamba": 4, "mamba2": 4, "s4": 4, "s4d": 4, "transformer": 2, "gru": 2, "lstm": 2}
# Fields that follow the width: Mamba-2's heads must divide d_inner (= 2 d_model by default), and
# its published d_state (128) is sized for d_model >= 768, not for budget-sized models.
WIDTH_FIELDS: dict[str, Callable[[int], dict]] = {
    "mamba2": lambda d_model: dict(d_state=16, headdim=math.gcd(2 * d_model, 16)),
}
TOLERANCE = 0.05
ALIGNMENTS = (8, 4, 2)      # d_model a multiple of 8 when that lands within TOLERANCE, else finer


def count_parameters(config: ConfigBase) -> int:
    """Unique parameters (tied weights once) of the model `config` describes, built on meta."""
    with torch.device("meta"):
        return from_config(config).num_parameters()


def _closest_width(count: Callable[[int], int], params: int, align: int) -> int:
    """The multiple of `align` whose count is nearest `params` (counts grow with the width)."""
    lo, hi = 1, 1                                   # widths are align * k
    while count(align * hi) < params:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:                              # invariant: count(align*hi) >= params
        mid = (lo + hi) // 2
        if count(align * mid) >= params:
            hi = mid
        else:
            lo = mid
    return min({lo, hi}, key=lambda k: abs(count(align * k) - params)) * align


def size_family(name: str, params: int, vocab_size: int = 257, n_layer: Optional[int] = None) -> ConfigBase:
    """The `name` config of depth `n_layer` whose parameter count is nearest `params`."""
    depth = n_layer if n_layer is not None else DEFAULT_DEPTH.get(name, 4)
    counts: dict[int, int] = {}
    width_fields = WIDTH_FIELDS.get(name, lambda d_model: {})

    def config(d_model: int) -> ConfigBase:
        return config_for(name, None, d_model=d_model, n_layer=depth, vocab_size=vocab_size,
                          **width_fields(d_model))

    def count(d_model: int) -> int:
        if d_model not in counts:
            counts[d_model] = count_parameters(config(d_model))
        return counts[d_model]

    for align in ALIGNMENTS:
        d_model = _closest_width(count, params, align)
        if abs(count(d_model) - params) <= TOLERANCE * params:
            return config(d_model)
    raise ValueError(f"cannot size {name} to {params:,} parameters within {TOLERANCE:.0%} at n_layer={depth} "
                     f"(nearest: d_model={d_model} with {count(d_model):,}); change the budget or n_layer")


def configs_for_budget(params: int, vocab_size: int = 257, n_layer: Optional[int | dict[str, int]] = None,
                       names: Optional[Iterable[str]] = None) -> dict[str, ConfigBase]:
    """{name: config} for every registered family (or `names`), each within 5% of `params` parameters.

    Only d_model is searched; depth is `n_layer` (one int for all, or per family) or DEFAULT_DEPTH.
    """
    require_int("params", params)
    names = list(REGISTRY) if names is None else list(names)
    for name in names:
        model_class(name)                           # unknown names fail before any sizing
    depths = n_layer if isinstance(n_layer, dict) else {name: n_layer for name in names}
    return {name: size_family(name, params, vocab_size, depths.get(name)) for name in names}
