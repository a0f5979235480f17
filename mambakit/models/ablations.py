"""The Mamba paper's Table 1 ablations as model families: architecture × inner sequence layer.

    s6          "S6, no gate": n_layer × (norm → S6 over d_model channels → GELU → linear, residual)
    mamba-s4d   "Mamba block + S4(D)": the Mamba block with the selection taken out (S4D inside)

Together with `s4 --output linear` ("S4, no gate") and `mamba` ("Mamba block + S6") they are the
four rows of `mambakit synth table1`. Initialisation follows mamba_ssm (`init_mamba_weights`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from mambakit.config import LMConfig
from mambakit.models.mamba_lm import init_mamba_weights
from mambakit.models.mixer_lm import MixerLM
from mambakit.models.s4_lm import LTIModes
from mambakit.modules.mamba_lti import MambaLTIMixer
from mambakit.modules.s6 import S6Mixer
from mambakit.modules.ssm_output import OUTPUTS

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
        if self.dt_rank != "auto":
            self._require_int("dt_rank")
        for name in ("dt_min", "dt_max", "dt_init_floor"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"S6Config.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
        self._require_choice("output", OUTPUTS[:2])


class S6LM(MixerLM):
    config_class = S6Config

    def __init__(self, config: S6Config):
        super().__init__(config)
        init_mamba_weights(self)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        c = self.config
        dt_rank = math.ceil(c.d_model / 16) if c.dt_rank == "auto" else c.dt_rank
        return S6Mixer(c.d_model, c.d_state, dt_rank, c.dt_min, c.dt_max, c.dt_init_floor, output=c.output)


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
        for name in ("dt_min", "dt_max"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"MambaS4DConfig.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
        self._require_choice("init", ("lin", "inv"))
        self._require_bool("conv_bias", "bias")


class MambaS4DLM(LTIModes, MixerLM):
    config_class = MambaS4DConfig

    def __init__(self, config: MambaS4DConfig):
        super().__init__(config)
        init_mamba_weights(self)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        c = self.config
        return MambaLTIMixer(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_min, c.dt_max, c.init,
                             c.conv_bias, c.bias)
