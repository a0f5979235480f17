"""MambaLM: the residual stack of `mixer_lm` with the selective (S6) Mamba mixer in every layer."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.config import MambaConfig
from mambakit.models.mixer_lm import MixerLM, RecurrentCache
from mambakit.modules.linear import PackedLinear
from mambakit.modules.mamba import MambaMixer
from mambakit.modules.mha import MHA
from mambakit.modules.norm import RMSNorm
from mambakit.ops.block_step_cpu import MambaLMStep
from mambakit.ops.step_cpu import MAX_GEMV_ROWS


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

    def step(self, tokens: Tensor, cache: RecurrentCache) -> Tensor:
        """As MixerLM.step; on CPU, when every layer takes the fused block step, the whole token
        (blocks, norm_f, LM head) runs as one compiled call (ops/block_step_cpu.MambaLMStep,
        whose twin is MixerLM.step; tests compare them)."""
        self.check_input_ids(tokens, dims=(1,))
        h = self.backbone.embedding(tokens)                             # (b, d_model)
        fused = self._fused_lm_step(h, cache)
        if fused is None:
            return super().step(tokens, cache)
        logits, convs, ssms = fused(h.contiguous(), [(s.conv.contiguous(), s.ssm.contiguous()) for s in cache.layers],
                                    self.backbone.layers[0].mixer.step_threads())
        for state, conv, ssm in zip(cache.layers, convs, ssms):
            state.conv, state.ssm = conv, ssm
        cache.seqlen_offset += 1
        return logits

    def _fused_lm_step(self, h: Tensor, cache: RecurrentCache) -> Optional[MambaLMStep]:
        """The MambaLMStep for the current weights, or None when some layer, norm_f or the head
        rules it out (then MixerLM.step runs, layer by layer)."""
        norm_f, head, layers = self.backbone.norm_f, self.lm_head, self.backbone.layers
        # what MambaMixer.fused_block_for checks, once for all layers (this runs per decoded token)
        if (torch.is_grad_enabled() or type(head) not in (nn.Linear, PackedLinear) or not isinstance(norm_f, RMSNorm)
                or norm_f.weight.dtype != torch.float32 or len(cache.layers) != len(layers)
                or h.device.type != "cpu" or h.dtype != torch.float32 or not 1 <= h.shape[0] <= MAX_GEMV_ROWS):
            return None
        blocks = []
        for layer, state in zip(layers, cache.layers):
            mixer, modules = layer.mixer, layer._modules
            if ("mlp" in modules or type(mixer) is not MambaMixer or mixer.step_backend == "ref"
                    or state.conv.dtype != torch.float32 or type(modules["norm"]) is not RMSNorm):
                return None
            block = mixer._fused_for(modules["norm"])
            if block is None:
                return None
            blocks.append(block)
        scale = getattr(head, "scale", None)
        key = (*map(id, blocks), norm_f.eps, norm_f.weight.data_ptr(), head.weight.data_ptr(),
               None if scale is None else scale.data_ptr(), None if head.bias is None else head.bias.data_ptr())
        if getattr(self, "_fused_lm", (None,))[0] != key:
            try:
                fused = MambaLMStep(blocks, norm_f.weight, norm_f.eps, (head.weight, scale, head.bias))
            except ValueError:
                fused = None     # e.g. a bf16 norm_f or head bias: the layer-by-layer step
            self._fused_lm = (key, fused)
        return self._fused_lm[1]
