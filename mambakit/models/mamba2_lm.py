"""Mamba2LM: the residual stack of `mixer_lm` with the Mamba-2 (SSD) mixer in every layer (or
attention at `attn_layer_idx`: a hybrid stack)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from mambakit.config import Mamba2Config
from mambakit.models.mamba_lm import hybrid_mixer, init_mamba_weights
from mambakit.models.mixer_lm import MixerLM, RecurrentCache
from mambakit.modules.mamba2 import Mamba2Mixer


class Mamba2LM(MixerLM):
    config_class = Mamba2Config
    supports_reset = True

    def __init__(self, config: Mamba2Config):
        super().__init__(config)
        self.supports_reset = not config.attn_layer_idx   # attention layers see whole rows
        init_mamba_weights(self)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        return hybrid_mixer(self.config, layer_idx, Mamba2Mixer)

    def set_ssd_backend(self, backend: str) -> None:
        """Choose the SSD backend for every Mamba-2 layer ("auto", "ref", "quadratic", "chunked", ...)."""
        for layer in self.backbone.layers:
            if isinstance(layer.mixer, Mamba2Mixer):
                layer.mixer.ssd_backend = backend

    def forward(self, input_ids: Tensor, cache: Optional[RecurrentCache] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None,
                logits_to_keep: int = 0, targets: Optional[Tensor] = None) -> Tensor:
        """As MixerLM.forward; `reset` (b, l) marks where packed documents start (state zeroed)."""
        return super().forward(input_ids, cache, attention_mask, logits_to_keep, targets, reset=reset)
