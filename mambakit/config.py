"""Typed model configs: one dataclass per model family, presets, and the config.json round trip.

Every family shares `ConfigBase`: unknown keys and impossible values raise a `ValueError` that
names the field, so a typo in a config.json never silently becomes a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mambakit.checks import require_finite, require_int


@dataclass
class ConfigBase:
    """Shared behaviour of every model config (validation, presets, dict/json round trip)."""

    model_type: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # every float field, whether validate() names it or not
            if isinstance(getattr(self, f.name), float):
                require_finite(f"{type(self).__name__}.{f.name}", getattr(self, f.name))
        self.validate()

    def validate(self) -> None:  # overridden by each family
        pass

    # -- helpers for validate() -------------------------------------------------------------
    def _require_int(self, name: str, minimum: int = 1) -> None:
        require_int(f"{type(self).__name__}.{name}", getattr(self, name), minimum)

    def _require_float(self, name: str, low: float = 0.0, low_inclusive: bool = False) -> None:
        # finite too: a nan norm_epsilon in a config.json would make every output nan
        require_finite(f"{type(self).__name__}.{name}", getattr(self, name), low, low_inclusive)

    def _require_bool(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{type(self).__name__}.{name} must be true/false, "
                                 f"got {getattr(self, name)!r}")

    def _require_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"{type(self).__name__}.{name} must be one of {list(choices)}, "
                             f"got {getattr(self, name)!r}")

    @property
    def padded_vocab_size(self) -> int:
        """Embedding / head rows: vocab_size rounded up to pad_vocab_size_multiple (every LM
        family has both fields), as mamba_ssm does for matmul-friendly shapes."""
        return pad_to_multiple(self.vocab_size, self.pad_vocab_size_multiple)

    # -- round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config is for model_type {model_type!r}, not {cls.model_type!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(hints)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose from {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[name], **overrides})

    def save(self, path: str | os.PathLike) -> None:
        from mambakit.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data)


def pad_to_multiple(n: int, multiple: int) -> int:
    return n if n % multiple == 0 else n + multiple - n % multiple


@dataclass
class LMConfig(ConfigBase):
    """Fields every residual-stack LM family shares (Mamba, S4/S4D, Transformer). A family
    redeclares the sizes with its own defaults (they keep their place) and adds its own fields,
    which follow these in config.json."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def validate(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            self._require_int(name)
        self._require_float("norm_epsilon")
        self._require_bool("rms_norm", "residual_in_fp32", "tie_embeddings")


# attn_cfg keys: mamba_ssm's MHA arguments (modules/mha.py), and the values we support for the
# restricted ones
ATTN_CFG_KEYS = ("num_heads", "num_heads_kv", "head_dim", "qkv_proj_bias", "out_proj_bias",
                 "softmax_scale", "causal", "rotary_emb_dim", "rotary_emb_base",
                 "rotary_emb_interleaved", "d_conv", "mlp_dim")
ATTN_CFG_FIXED = {"causal": True, "rotary_emb_interleaved": False, "d_conv": 0, "mlp_dim": 0}


@dataclass
class MixerStackConfig(LMConfig):
    """mamba_ssm's MixerModel fields for hybrid stacks, shared by Mamba and Mamba-2: attention
    layers (mamba_ssm's MHA, arguments in `attn_cfg`) at the indices in `attn_layer_idx`."""

    attn_layer_idx: list[int] = field(default_factory=list)
    attn_cfg: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        idx = self.attn_layer_idx
        if not isinstance(idx, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in idx) \
                or len(set(idx)) != len(idx) or any(not 0 <= i < self.n_layer for i in idx):
            raise ValueError(f"{name}.attn_layer_idx must be distinct layer indices in 0..{self.n_layer - 1}, "
                             f"got {idx!r}")
        self.attn_layer_idx = sorted(idx)
        if not isinstance(self.attn_cfg, dict):
            raise ValueError(f"{name}.attn_cfg must be an object, got {self.attn_cfg!r}")
        unknown = sorted(set(self.attn_cfg) - set(ATTN_CFG_KEYS))
        if unknown:
            raise ValueError(f"{name}.attn_cfg: unknown key(s) {unknown}; known: {list(ATTN_CFG_KEYS)}")
        if idx and "num_heads" not in self.attn_cfg:
            raise ValueError(f"{name}.attn_cfg must give num_heads for the attention layers {list(idx)}")
        for key, value in ATTN_CFG_FIXED.items():
            if self.attn_cfg.get(key, value) != value:
                raise ValueError(f"{name}.attn_cfg.{key}={self.attn_cfg[key]!r} is not supported "
                                 f"(only {value!r})")


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
        if self.dt_rank != "auto":
            self._require_int("dt_rank")
        for name in ("dt_min", "dt_max", "dt_init_floor", "dt_scale"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"MambaConfig.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
        self._require_bool("conv_bias", "bias")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank


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
        for field in ("dt_min", "dt_max", "dt_init_floor"):
            self._require_float(field)
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
        if self.dt_min > self.dt_max:
            raise ValueError(f"{name}.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
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
