"""Mamba-2 (SSD) LM config, named as mamba_ssm's Mamba2 mixer arguments."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from mambakit.config.mixer_stack import MixerStackConfig


@dataclass
class Mamba2Config(MixerStackConfig):
    """Mamba-2 LM hyper-parameters, named as mamba_ssm's Mamba2 mixer arguments (its MambaConfig
    keeps them in ssm_cfg; here they are flat, one typed field each)."""

    model_type: ClassVar[str] = "mamba2"
    # The published state-spaces/mamba2-* sizes (d_state 128, headdim 64, expand 2, ngroups 1).
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(d_model=64, n_layer=2, vocab_size=257, d_state=16, headdim=16, chunk_size=64),
        "130m": dict(d_model=768, n_layer=24, vocab_size=50277),
        "370m": dict(d_model=1024, n_layer=48, vocab_size=50277),
        "780m": dict(d_model=1536, n_layer=48, vocab_size=50277),
        "1.3b": dict(d_model=2048, n_layer=48, vocab_size=50277),
        "2.7b": dict(d_model=2560, n_layer=64, vocab_size=50277),
    }

    pad_vocab_size_multiple: int = 16
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    d_ssm: int | None = None         # None: the SSM spans all d_inner channels (no parallel MLP)
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    D_has_hdim: bool = False
    rmsnorm: bool = True             # gated RMSNorm before out_proj (else y · SiLU(z))
    norm_before_gate: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)
    bias: bool = False
    conv_bias: bool = True
    chunk_size: int = 256

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for field in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
            self._require_int(field)
        self._require_dt_range()
        self._require_float("dt_init_floor")
        self._require_bool("D_has_hdim", "rmsnorm", "norm_before_gate", "bias", "conv_bias")
        for field in ("A_init_range", "dt_limit"):
            value = getattr(self, field)
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                    or value[0] > value[1]):
                raise ValueError(f"{name}.{field} must be a pair [low, high] with low <= high, got {value!r}")
            setattr(self, field, (float(value[0]), float(value[1])))  # JSON gives lists
        if self.A_init_range[0] <= 0:
            raise ValueError(f"{name}.A_init_range must be positive (A = -a, a in the range), "
                             f"got {self.A_init_range}")
        if self.d_ssm is not None and self.d_ssm != self.d_inner:
            raise ValueError(f"{name}.d_ssm={self.d_ssm} < d_inner={self.d_inner} (a Mamba-2 with a "
                             f"parallel gated MLP) is not supported; leave d_ssm null")
        if self.d_inner % self.headdim:
            raise ValueError(f"{name}: d_inner = expand·d_model = {self.d_inner} must be a multiple "
                             f"of headdim ({self.headdim})")
        if self.nheads % self.ngroups:
            raise ValueError(f"{name}: nheads = {self.nheads} must be a multiple of ngroups ({self.ngroups})")
        if self.rmsnorm and self.d_inner % self.ngroups:
            raise ValueError(f"{name}: d_inner ({self.d_inner}) must be a multiple of ngroups "
                             f"({self.ngroups}) for the grouped RMSNorm")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C go through it together."""
        return self.d_inner + 2 * self.ngroups * self.d_state
