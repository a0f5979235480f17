"""MambaLM: the residual stack of `mixer_lm` with the selective (S6) Mamba mixer in every layer."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.config import MambaConfig
from mambakit.models.mixer_lm import MixerLM, RecurrentCache
from mambakit.modules.mamba import MambaMixer
from mambakit.modules.mha import MHA


def hybrid_mixer(config, layer_idx: int, make_ssm_mixer) -> nn.Module:
    """mamba_ssm's create_block: attention (MHA with attn_cfg) at attn_layer_idx, else the SSM."""
    if layer_idx in config.attn_layer_idx:
        return MHA(config.d_model, layer_idx=layer_idx, **config.attn_cfg)
    return make_ssm_mixer(config, layer_idx)


# The cache type of MambaLM: one MambaState (conv, ssm) per layer.
MambaCache = RecurrentCache


@torch.no_grad()
def init_mamba_weights(model: MixerLM) -> None:
    """mamba_ssm's _init_weights (Mamba-1, Mamba-2 and their hybrids alike): zero linear biases
    (except Δ's), N(0, 0.02) embeddings, and each residual branch's last projection (the mixer's
    out_proj, the MLP's fc2) rescaled by 1/sqrt(branches per layer · n_layer) so the residual
    stream's variance stays bounded."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None \
                and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    nn.init.normal_(model.backbone.embedding.weight, std=0.02)
    branches = 2 if getattr(model.config, "d_intermediate", 0) else 1   # S6 stacks have no MLP field
    for layer in model.backbone.layers:
        last = [layer.mixer.out_proj] + ([layer.mlp.fc2] if hasattr(layer, "mlp") else [])
        for proj in last:
            if proj is not None:
                nn.init.kaiming_uniform_(proj.weight, a=math.sqrt(5))
                proj.weight /= math.sqrt(branches * model.config.n_layer)


class MambaLM(MixerLM):
    config_class = MambaConfig
    supports_reset = True

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.supports_reset = not config.attn_layer_idx   # attention layers see whole rows
        init_mamba_weights(self)
        self.tie_weights()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        return hybrid_mixer(self.config, layer_idx, MambaMixer)

    def set_scan_backend(self, backend: str) -> None:
        """Choose the selective-scan backend for every Mamba layer ("auto", "ref", "cpu", ...)."""
        for layer in self.backbone.layers:
            if isinstance(layer.mixer, MambaMixer):
                layer.mixer.scan_backend = backend

    def forward(self, input_ids: Tensor, cache: Optional[RecurrentCache] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None,
                logits_to_keep: int = 0, targets: Optional[Tensor] = None) -> Tensor:
        """As MixerLM.forward; `reset` (b, l) marks where packed documents start (state zeroed)."""
        return super().forward(input_ids, cache, attention_mask, logits_to_keep, targets, reset=reset)
