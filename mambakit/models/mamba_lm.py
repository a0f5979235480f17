"""MambaLM: embedding → n_layer × (RMSNorm → MambaMixer, residual) → norm_f → tied LM head.

Module names follow mamba_ssm's MambaLMHeadModel (backbone.embedding, backbone.layers.i.mixer,
backbone.layers.i.norm, backbone.norm_f, lm_head) so its state dicts map key for key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.config import MambaConfig
from mambakit.models.base import LanguageModel
from mambakit.modules.block import Block
from mambakit.modules.mamba import MambaMixer, MambaState
from mambakit.modules.norm import make_norm


@dataclass
class MambaCache:
    """Per-layer recurrent state; its size does not grow with the context (O(1) per token)."""

    layers: list[MambaState]
    seqlen_offset: int = 0

    def clone(self) -> "MambaCache":
        return MambaCache([s.clone() for s in self.layers], self.seqlen_offset)


class MambaBackbone(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(MambaMixer(cfg, i), make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm),
                  cfg.residual_in_fp32)
            for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm)


class MambaLM(LanguageModel):
    config_class = MambaConfig
    tied_weights = {"lm_head.weight": "backbone.embedding.weight"}
    supports_reset = True

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self._init_weights()
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # mamba_ssm's _init_weights: zero linear biases (except Δ's), N(0, 0.02) embeddings, and
        # out_proj rescaled by 1/sqrt(n_layer) so the residual stream's variance stays bounded.
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None \
                    and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for layer in self.backbone.layers:
            w = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            w /= math.sqrt(self.config.n_layer)

    def set_scan_backend(self, backend: str) -> None:
        """Choose the selective-scan backend for every layer ("auto", "ref", "cpu", ...)."""
        for layer in self.backbone.layers:
            layer.mixer.scan_backend = backend

    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> MambaCache:
        return MambaCache([layer.mixer.allocate_state(batch_size) for layer in self.backbone.layers])

    def forward(self, input_ids: Tensor, cache: Optional[MambaCache] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab).

        With `cache`, the sequence continues from the cached state and the cache ends holding the
        state after the last token (prefill). `attention_mask` (b, l) marks left padding with 0;
        `reset` (b, l) marks where packed documents start.
        """
        self.check_input_ids(input_ids)
        h = self.backbone.embedding(input_ids)                          # (b, l, d_model)
        for i, layer in enumerate(self.backbone.layers):
            h = layer(h, None if cache is None else cache.layers[i], attention_mask, reset)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        h = self.backbone.norm_f(h.to(self.lm_head.weight.dtype))
        return self.lm_head(h)                                          # (b, l, vocab)

    def step(self, tokens: Tensor, cache: MambaCache) -> Tensor:
        self.check_input_ids(tokens, dims=(1,))
        h = self.backbone.embedding(tokens)                             # (b, d_model)
        for layer, state in zip(self.backbone.layers, cache.layers):
            h = layer.step(h, state)
        cache.seqlen_offset += 1
        return self.lm_head(self.backbone.norm_f(h.to(self.lm_head.weight.dtype)))  # (b, vocab)
