"""Language models with one shared surface (`base`), and the registry that builds them by name."""
from mambakit.config import (
    GRUConfig,
    LSTMConfig,
    Mamba2Config,
    MambaConfig,
    MambaS4DConfig,
    RNNConfig,
    S4Config,
    S4DConfig,
    S6Config,
    TransformerConfig,
)
from mambakit.models.ablations import S6LM, MambaS4DLM
from mambakit.models.auto import convert, load_model
from mambakit.models.base import LanguageModel
from mambakit.models.budget import configs_for_budget
from mambakit.models.mamba2_lm import Mamba2LM
from mambakit.models.mamba_lm import MambaCache, MambaLM
from mambakit.models.registry import REGISTRY, build, config_for, from_config, model_class
from mambakit.models.rnn_lm import GRULM, LSTMLM, RNNLM
from mambakit.models.s4_lm import S4DLM, S4LM
from mambakit.models.transformer_lm import TransformerLM

__all__ = ["REGISTRY", "build", "config_for", "configs_for_budget", "from_config", "model_class",
           "load_model", "convert", "LanguageModel",
           "MambaLM", "MambaCache", "MambaConfig", "Mamba2LM", "Mamba2Config", "S4LM", "S4DLM", "S4Config",
           "S4DConfig", "TransformerLM", "TransformerConfig", "RNNLM", "RNNConfig", "GRULM", "GRUConfig",
           "LSTMLM", "LSTMConfig", "S6LM", "S6Config", "MambaS4DLM", "MambaS4DConfig"]
