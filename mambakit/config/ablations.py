"""Configs of the Mamba paper's Table 1 ablation families (models/ablations.py): "s6" and "mamba-s4d"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mambakit.config.base import LMConfig
from mambakit.config.s4 import OUTPUTS

_TINY = dict(d_model=64, n_layer=2, vocab_size=257)


@dataclass
class S6Config(LMConfig):
    model_type: ClassVar[str] = "s6"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": _TINY}

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 257
    d_state: int = 16
    dt_rank: int | str = "auto"     # ceil(d_model / 16), as mamba_ssm
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    output: str = "linear"          # "linear": no gate (Table 1); "glu": S4's gated head

    def validate(self) -> None:
        super().validate()
        self._require_int("d_state")
        self._require_dt_rank()
        self._require_dt_range()
        self._require_float("dt_init_floor")
        self._require_choice("output", OUTPUTS[:2])


@dataclass
class MambaS4DConfig(LMConfig):
    model_type: ClassVar[str] = "mamba-s4d"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {**_TINY, "d_state": 32}}

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 257
    d_state: int = 64               # real state size N: N/2 complex S4D modes per channel
    d_conv: int = 4
    expand: int = 2
    dt_min: float = 0.001
    dt_max: float = 0.1
    init: str = "lin"               # S4D-Lin or S4D-Inv
    conv_bias: bool = True
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("d_state", "d_conv", "expand"):
            self._require_int(name)
        if self.d_state % 2:
            raise ValueError(f"MambaS4DConfig.d_state must be even (conjugate pairs), got {self.d_state}")
        self._require_dt_range()
        self._require_choice("init", ("lin", "inv"))
        self._require_bool("conv_bias", "bias")
