"""The residual-stack LM shared by Mamba and the LTI SSMs (S4, S4D):

    embedding → n_layer × Block(norm → mixer, residual) → norm_f → tied LM head

Module names follow mamba_ssm's MambaLMHeadModel (backbone.embedding, backbone.layers.i.mixer,
backbone.layers.i.norm, backbone.norm_f, lm_head), so its state dicts map key for key. A family
only says which mixer each layer gets; every mixer has `allocate_state`, `forward(h, state, ...)`
and `step(h, state)`, and its state is a dataclass of tensors of fixed size (O(1) in the context).
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from mambakit.models.base import LanguageModel
from mambakit.modules.block import Block
from mambakit.modules.mlp import GatedMLP
from mambakit.modules.norm import make_norm


@dataclass
class RecurrentCache:
    """One recurrent state per layer, plus how many tokens they have absorbed."""

    layers: list[Any]
    seqlen_offset: int = 0

    def clone(self) -> "RecurrentCache":
        return RecurrentCache([s.clone() for s in self.layers], self.seqlen_offset)

    def tensors(self) -> dict[str, Tensor]:
        """Flat {"layers.i.field": tensor} view, e.g. for saving with safetensors."""
        return {f"layers.{i}.{f.name}": getattr(state, f.name)
                for i, state in enumerate(self.layers) for f in dataclasses.fields(state)}

    @property
    def batch_size(self) -> int:
        first = self.layers[0]
        return getattr(first, dataclasses.fields(first)[0].name).shape[0]

    # Row operations: every field of every layer's state is batch-first, whatever the mixer, so
    # these serve any family built on MixerLM (Mamba, S4, S4D, and later ones) unchanged.
    def select(self, rows: Tensor) -> "RecurrentCache":
        """A new cache holding rows `rows` (k,) int64 of this one (copies; repeats allowed)."""
        return RecurrentCache([_map_fields(s, lambda t: t.index_select(0, rows)) for s in self.layers],
                              self.seqlen_offset)

    @staticmethod
    def concat(caches: Sequence["RecurrentCache"]) -> "RecurrentCache":
        """Stack the rows of several caches. Rows may have absorbed different numbers of tokens
        (a recurrent state does not care); seqlen_offset becomes the largest."""
        layers = [_concat_states(states) for states in zip(*(c.layers for c in caches))]
        return RecurrentCache(layers, max(c.seqlen_offset for c in caches))


def _concat_states(states: Sequence[Any]) -> Any:
    """One layer's states stacked by rows: the state type's own `concat` when it has one (a KV
    cache must line up slots), else every field concatenated on the batch dim."""
    if hasattr(type(states[0]), "concat"):
        return type(states[0]).concat(list(states))
    return dataclasses.replace(states[0], **{f.name: torch.cat([getattr(s, f.name) for s in states])
                                             for f in dataclasses.fields(states[0])})


def _map_fields(state: Any, fn) -> Any:
    return dataclasses.replace(state, **{f.name: fn(getattr(state, f.name)) for f in dataclasses.fields(state)})


class MixerBackbone(nn.Module):
    def __init__(self, config, mixers: list[nn.Module]):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        d_mlp = getattr(config, "d_intermediate", 0)   # mamba_ssm's MLP after each mixer

        def norm():
            return make_norm(config.d_model, config.norm_epsilon, config.rms_norm)

        self.layers = nn.ModuleList(
            Block(mixer, norm(), config.residual_in_fp32,
                  GatedMLP(config.d_model, d_mlp) if d_mlp else None, norm() if d_mlp else None)
            for mixer in mixers)
        self.norm_f = make_norm(config.d_model, config.norm_epsilon, config.rms_norm)


class MixerLM(LanguageModel):
    tied_weights = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.backbone = MixerBackbone(config, [self.make_mixer(i) for i in range(config.n_layer)])
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)

    @abc.abstractmethod
    def make_mixer(self, layer_idx: int) -> nn.Module:
        """The sequence mixer of layer `layer_idx` (what tells the families apart)."""

    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> RecurrentCache:
        return RecurrentCache([layer.mixer.allocate_state(batch_size) for layer in self.backbone.layers])

    def forward(self, input_ids: Tensor, cache: Optional[RecurrentCache] = None,
                attention_mask: Optional[Tensor] = None, logits_to_keep: int = 0,
                targets: Optional[Tensor] = None, **mixer_kwargs) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab), or (b, logits_to_keep, padded_vocab)
        for the last positions only when logits_to_keep > 0; with `targets` (b, l), the mean
        next-token loss instead (see LanguageModel.head).

        With `cache`, the sequence continues from the cached state and the cache ends holding the
        state after the last token (prefill, or chunked continuation); with grad enabled that final
        state is differentiable. `attention_mask` (b, l) marks left padding with 0.
        """
        self.check_input_ids(input_ids)
        attention_mask = self.check_attention_mask(attention_mask, input_ids)
        h = self.backbone.embedding(input_ids)                          # (b, l, d_model)
        for i, layer in enumerate(self.backbone.layers):
            h = self.run_layer(layer, h, None if cache is None else cache.layers[i], attention_mask,
                               **mixer_kwargs)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        h = self.keep_last(h, logits_to_keep).to(self.backbone.embedding.weight.dtype)
        return self.head(h, targets)                                    # (b, l, vocab)

    def step(self, tokens: Tensor, cache: RecurrentCache) -> Tensor:
        self.check_input_ids(tokens, dims=(1,))
        h = self.backbone.embedding(tokens)                             # (b, d_model)
        for layer, state in zip(self.backbone.layers, cache.layers):
            h = layer.step(h, state)
        cache.seqlen_offset += 1
        return self.lm_head(self.backbone.norm_f(h.to(self.backbone.embedding.weight.dtype)))  # (b, vocab)


