"""Mamba (S6) LM config, named as in mamba_ssm's MambaConfig / Mamba mixer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mambakit.config.mixer_stack import MixerStackConfig


@dataclass
class MambaConfig(MixerStackConfig):
    """Mamba LM hyper-parameters, named as in mamba_ssm's MambaConfig / Mamba mixer."""

    model_type: ClassVar[str] = "mamba"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(d_model=64, n_layer=2, vocab_size=257),
        "130m": dict(d_model=768, n_layer=24, vocab_size=50277),
        "370m": dict(d_model=1024, n_layer=48, vocab_size=50277),
        "790m": dict(d_model=1536, n_layer=48, vocab_size=50277),
        "1.4b": dict(d_model=2048, n_layer=48, vocab_size=50277),
        "2.8b": dict(d_model=2560, n_layer=64, vocab_size=50277),
    }

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("d_state", "d_conv", "expand"):
            self._require_int(name)
        self._require_dt_rank()
        self._require_dt_range()
        for name in ("dt_init_floor", "dt_scale"):
            self._require_float(name)
        self._require_bool("conv_bias", "bias")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model
