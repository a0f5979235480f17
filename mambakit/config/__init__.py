"""Typed model configs, all in this package (one file per family, below modules/ and models/ so
layers and converters can read them): presets, validation, and the config.json round trip."""
from mambakit.config.ablations import MambaS4DConfig, S6Config
from mambakit.config.base import ConfigBase, LMConfig, pad_to_multiple
from mambakit.config.mamba import MambaConfig
from mambakit.config.mamba2 import Mamba2Config
from mambakit.config.mixer_stack import ATTN_CFG_FIXED, ATTN_CFG_KEYS, MixerStackConfig
from mambakit.config.rnn import GRUConfig, LSTMConfig, RNNConfig
from mambakit.config.s4 import LTIConfig, S4Config, S4DConfig
from mambakit.config.transformer import TransformerConfig

__all__ = ["ConfigBase", "LMConfig", "pad_to_multiple", "MambaConfig", "Mamba2Config", "MixerStackConfig", "ATTN_CFG_KEYS", "ATTN_CFG_FIXED", "RNNConfig", "GRUConfig",
           "LSTMConfig", "LTIConfig", "S4Config", "S4DConfig", "TransformerConfig",
           "S6Config", "MambaS4DConfig"]
