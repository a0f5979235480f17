"""What every model config shares: validation, presets, and the config.json round trip.

Every family's config derives from `ConfigBase`: unknown keys and impossible values raise a `ValueError` that
names the field, so a typo in a config.json never silently becomes a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass
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

    def _require_dt_range(self) -> None:
        """dt_min <= dt_max, both > 0: the range Δ is initialised in (every SSM family has one)."""
        for name in ("dt_min", "dt_max"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"{type(self).__name__}.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")

    def _require_dt_rank(self) -> None:
        """dt_rank is "auto" (mamba_ssm's ceil(d_model / 16)) or a positive int."""
        if self.dt_rank != "auto":
            self._require_int("dt_rank")

    @property
    def resolved_dt_rank(self) -> int:
        """The rank of Δ's low-rank projection, "auto" resolved as mamba_ssm does."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank

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
