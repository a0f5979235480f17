"""The Mamba paper's Table 1 ablations as model families: architecture × inner sequence layer.

    s6          "S6, no gate": n_layer × (norm → S6 over d_model channels → GELU → linear, residual)
    mamba-s4d   "Mamba block + S4(D)": the Mamba block with the selection taken out (S4D inside)

Together with `s4 --output linear` ("S4, no gate") and `mamba` ("Mamba block + S6") they are the
four rows of `mambakit synth table1`. Initialisation follows mamba_ssm (`init_mamba_weights`).
"""
from __future__ import annotations

from torch import nn

from mambakit.config.ablations import MambaS4DConfig, S6Config
from mambakit.models.mamba_lm import init_mamba_weights
from mambakit.models.mixer_lm import MixerLM
from mambakit.models.s4_lm import LTIModes
from mambakit.modules.mamba_lti import MambaLTIMixer
from mambakit.modules.s6 import S6Mixer


class S6LM(MixerLM):
    config_class = S6Config

    def __init__(self, config: S6Config):
        super().__init__(config)
        init_mamba_weights(self)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        c = self.config
        return S6Mixer(c.d_model, c.d_state, c.resolved_dt_rank, c.dt_min, c.dt_max, c.dt_init_floor, output=c.output)


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
