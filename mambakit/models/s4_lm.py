"""S4LM and S4DLM: embedding → n_layer × (norm → S4/S4D mixer, residual) → norm_f → tied LM head.

The same skeleton as MambaLM (module names backbone.embedding / layers.i.mixer / norm_f, lm_head),
with the selective mixer swapped for an LTI one, so tasks and benchmarks compare them with one flag.
`set_mode("conv" | "recurrent")` is the LSSL switch for every layer; `step` always recurs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from mambakit.config import LMConfig
from mambakit.models.mixer_lm import MixerLM
from mambakit.modules.s4 import MODES, LTIMixer, S4DMixer, S4Mixer
from mambakit.modules.ssm_output import OUTPUTS

_PRESETS = {
    "tiny": dict(d_model=64, n_layer=2, vocab_size=257, d_state=32),
    "small": dict(d_model=256, n_layer=4, vocab_size=257, d_state=64),
}


@dataclass
class _LTIConfig(LMConfig):
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
        for name in ("dt_min", "dt_max"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"{type(self).__name__}.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")


@dataclass
class S4Config(_LTIConfig):
    model_type: ClassVar[str] = "s4"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    b_clip: Optional[float] = None  # clamp Im B̃ at init (S4's code: 2.0); None: exactly HiPPO-LegS

    def validate(self) -> None:
        super().validate()
        if self.b_clip is not None:
            self._require_float("b_clip")

    def make_mixer(self) -> LTIMixer:
        return S4Mixer(self.d_model, self.d_state, self.dt_min, self.dt_max, self.b_clip, self.output)


@dataclass
class S4DConfig(_LTIConfig):
    model_type: ClassVar[str] = "s4d"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    init: str = "lin"               # "lin" (S4D-Lin) or "inv" (S4D-Inv)

    def validate(self) -> None:
        super().validate()
        self._require_choice("init", ("lin", "inv"))

    def make_mixer(self) -> LTIMixer:
        return S4DMixer(self.d_model, self.d_state, self.dt_min, self.dt_max, self.init, self.output)


class LTIModes:
    """`set_mode` for a MixerLM whose mixers all have an LSSL `mode`."""

    def set_mode(self, mode: str) -> None:
        """"conv" (FFT convolution: training, long prefill) or "recurrent" (step by step) everywhere."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        for layer in self.backbone.layers:
            layer.mixer.mode = mode


class _LTILM(LTIModes, MixerLM):
    def __init__(self, config: _LTIConfig):
        super().__init__(config)
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> LTIMixer:
        return self.config.make_mixer()


class S4LM(_LTILM):
    config_class = S4Config


class S4DLM(_LTILM):
    config_class = S4DConfig
