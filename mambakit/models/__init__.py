"""Language models with one shared surface, and the registry that builds them by name."""
from __future__ import annotations

from typing import Any

from mambakit.config import ConfigBase, Mamba2Config, MambaConfig
from mambakit.models.ablations import MambaS4DConfig, MambaS4DLM, S6Config, S6LM
from mambakit.models.base import LanguageModel
from mambakit.models.mamba_lm import MambaCache, MambaLM
from mambakit.models.mamba2_lm import Mamba2LM
from mambakit.models.rnn_lm import GRUConfig, GRULM, LSTMConfig, LSTMLM, RNNConfig, RNNLM
from mambakit.models.s4_lm import S4Config, S4DConfig, S4DLM, S4LM
from mambakit.models.transformer_lm import TransformerConfig, TransformerLM

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


# After the registry: budget sizes the families registered above.
from mambakit.models.budget import configs_for_budget  # noqa: E402

__all__ = ["REGISTRY", "build", "config_for", "configs_for_budget", "from_config", "model_class",
           "LanguageModel",
           "MambaLM", "MambaCache", "MambaConfig", "Mamba2LM", "Mamba2Config", "S4LM", "S4DLM", "S4Config", "S4DConfig",
           "TransformerLM", "TransformerConfig", "RNNLM", "RNNConfig", "GRULM", "GRUConfig",
           "LSTMLM", "LSTMConfig", "S6LM", "S6Config", "MambaS4DLM", "MambaS4DConfig"]
