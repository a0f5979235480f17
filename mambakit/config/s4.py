"""S4 and S4D LM configs (LTI state-space layers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from mambakit.config.base import LMConfig

# What follows the SSM in a layer (see modules/ssm_output.py)
OUTPUTS = ("glu", "linear", "none")

_PRESETS = {
    "tiny": dict(d_model=64, n_layer=2, vocab_size=257, d_state=32),
    "small": dict(d_model=256, n_layer=4, vocab_size=257, d_state=64),
}


@dataclass
class LTIConfig(LMConfig):
    """Fields shared by S4 and S4D (not registered itself: each family has its own model_type)."""

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 257
    d_state: int = 64               # real state size N; N/2 conjugate pairs are parameters
    dt_min: float = 0.001
    dt_max: float = 0.1
    output: str = "glu"             # after the SSM: "glu" (S4's), "linear" (no gate) or "none"

    def validate(self) -> None:
        super().validate()
        self._require_choice("output", OUTPUTS)
        self._require_int("d_state")
        if self.d_state % 2:
            raise ValueError(f"{type(self).__name__}.d_state must be even (conjugate pairs), got {self.d_state}")
        self._require_dt_range()


@dataclass
class S4Config(LTIConfig):
    model_type: ClassVar[str] = "s4"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    b_clip: Optional[float] = None  # clamp Im B̃ at init (S4's code: 2.0); None: exactly HiPPO-LegS

    def validate(self) -> None:
        super().validate()
        if self.b_clip is not None:
            self._require_float("b_clip")


@dataclass
class S4DConfig(LTIConfig):
    model_type: ClassVar[str] = "s4d"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    init: str = "lin"               # "lin" (S4D-Lin) or "inv" (S4D-Inv)

    def validate(self) -> None:
        super().validate()
        self._require_choice("init", ("lin", "inv"))
