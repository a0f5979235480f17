"""S4LM and S4DLM: embedding → n_layer × (norm → S4/S4D mixer, residual) → norm_f → tied LM head.

The same skeleton as MambaLM (module names backbone.embedding / layers.i.mixer / norm_f, lm_head),
with the selective mixer swapped for an LTI one, so tasks and benchmarks compare them with one flag.
`set_mode("conv" | "recurrent")` is the LSSL switch for every layer; `step` always recurs.
"""
from __future__ import annotations

import torch
from torch import nn

from mambakit.config.s4 import LTIConfig, S4Config, S4DConfig
from mambakit.models.mixer_lm import MixerLM
from mambakit.modules.s4 import MODES, LTIMixer, S4DMixer, S4Mixer


class LTIModes:
    """`set_mode` for a MixerLM whose mixers all have an LSSL `mode`."""

    def set_mode(self, mode: str) -> None:
        """"conv" (FFT convolution: training, long prefill) or "recurrent" (step by step) everywhere."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        for layer in self.backbone.layers:
            layer.mixer.mode = mode


class _LTILM(LTIModes, MixerLM):
    def __init__(self, config: LTIConfig):
        super().__init__(config)
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        self.tie_weights()


class S4LM(_LTILM):
    config_class = S4Config

    def make_mixer(self, layer_idx: int) -> LTIMixer:
        c = self.config
        return S4Mixer(c.d_model, c.d_state, c.dt_min, c.dt_max, c.b_clip, c.output)


class S4DLM(_LTILM):
    config_class = S4DConfig

    def make_mixer(self, layer_idx: int) -> LTIMixer:
        c = self.config
        return S4DMixer(c.d_model, c.d_state, c.dt_min, c.dt_max, c.init, c.output)
