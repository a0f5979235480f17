"""The family registry: model name -> class, and building a model from a name or a config.

Adding a model family is one model file plus one entry in REGISTRY.
"""
from __future__ import annotations

from typing import Any

from mambakit.config import ConfigBase
from mambakit.models.ablations import S6LM, MambaS4DLM
from mambakit.models.base import LanguageModel
from mambakit.models.mamba2_lm import Mamba2LM
from mambakit.models.mamba_lm import MambaLM
from mambakit.models.rnn_lm import GRULM, LSTMLM
from mambakit.models.s4_lm import S4DLM, S4LM
from mambakit.models.transformer_lm import TransformerLM

# name -> model class; the class's config_class.model_type is what config.json records.
REGISTRY: dict[str, type[LanguageModel]] = {
    "mamba": MambaLM,
    "mamba2": Mamba2LM,
    "s4": S4LM,
    "s4d": S4DLM,
    "transformer": TransformerLM,
    "gru": GRULM,
    "lstm": LSTMLM,
    "s6": S6LM,                 # the Mamba paper's Table 1 ablations (models/ablations.py)
    "mamba-s4d": MambaS4DLM,
}


def model_class(name: str) -> type[LanguageModel]:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]


def config_for(name: str, preset: str | None = None, **fields: Any) -> ConfigBase:
    cls = model_class(name).config_class
    return cls.preset(preset, **fields) if preset else cls.from_dict(fields)


def build(name: str, preset: str | None = None, **fields: Any) -> LanguageModel:
    """build("mamba", d_model=64, n_layer=2, vocab_size=257) -> a freshly initialised model."""
    cls = model_class(name)
    return cls(config_for(name, preset, **fields))


def from_config(config: ConfigBase) -> LanguageModel:
    for cls in REGISTRY.values():
        if isinstance(config, cls.config_class):
            return cls(config)
    raise ValueError(f"no model registered for {type(config).__name__}")
