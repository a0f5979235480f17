"""GRULM and LSTMLM: embedding → stacked GRU / LSTM → norm_f → tied LM head.

The classical baseline: O(1) state per token like Mamba, but the recurrence is non-linear in h,
so training cannot run it as a scan or a convolution — it is sequential in l. Two registry
entries, "gru" and "lstm", share one model (`RNNLM`) and one set of fields (`RNNConfig`); each
has its own config class so config.json's `model_type` says which cell to rebuild.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mambakit.config.rnn import GRUConfig, LSTMConfig, RNNConfig
from mambakit.models.base import LanguageModel
from mambakit.modules.norm import make_norm
from mambakit.modules.rnn import RecurrentStack, RNNState


@dataclass
class RNNCache:
    """The hidden state after the last token, (n_layer, b, d_model) per part: O(1) in the context."""

    state: RNNState
    seqlen_offset: int = 0

    def clone(self) -> "RNNCache":
        return RNNCache(tuple(s.clone() for s in self.state), self.seqlen_offset)

    def tensors(self) -> dict[str, Tensor]:
        return {f"state.{i}": s for i, s in enumerate(self.state)}

    @property
    def batch_size(self) -> int:
        return self.state[0].shape[1]

    def select(self, rows: Tensor) -> "RNNCache":
        """A new cache holding rows `rows` (k,) of this one; the batch is dim 1 of (n_layer, b, d)."""
        return RNNCache(tuple(s.index_select(1, rows) for s in self.state), self.seqlen_offset)

    @staticmethod
    def concat(caches: Sequence["RNNCache"]) -> "RNNCache":
        return RNNCache(tuple(torch.cat(parts, dim=1) for parts in zip(*(c.state for c in caches))),
                        max(c.seqlen_offset for c in caches))


class RNNBackbone(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.rnn = RecurrentStack(cfg.cell, cfg.d_model, cfg.n_layer, cfg.dropout)
        # The cells' outputs are bounded (|h| < 1); a final norm gives the tied head a scale to learn.
        self.norm_f = make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm)


class RNNLM(LanguageModel):
    config_class = RNNConfig
    tied_weights = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config: RNNConfig):
        super().__init__(config)
        self.backbone = RNNBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        self.tie_weights()

    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> RNNCache:
        return RNNCache(self.backbone.rnn.allocate_state(batch_size))

    def forward(self, input_ids: Tensor, cache: Optional[RNNCache] = None,
                attention_mask: Optional[Tensor] = None, logits_to_keep: int = 0,
                targets: Optional[Tensor] = None) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab) (the last `logits_to_keep` positions
        only, if > 0; with `targets`, the mean loss: LanguageModel.head). With `cache`, continue from its state and
        leave the final one there (prefill). `attention_mask` (b, l), 0 on LEFT padding: pads leave
        the state untouched, even when continuing from a cache."""
        self.check_input_ids(input_ids)
        mask = self.check_attention_mask(attention_mask, input_ids)
        h = self.backbone.embedding(input_ids)                              # (b, l, d_model)
        y, state = self.backbone.rnn(h, None if cache is None else cache.state, mask)
        if cache is not None:
            cache.state = state
            cache.seqlen_offset += input_ids.shape[1]
        return self.head(self.keep_last(y, logits_to_keep), targets)        # (b, l, vocab)

    def step(self, tokens: Tensor, cache: RNNCache) -> Tensor:
        self.check_input_ids(tokens, dims=(1,))
        y, cache.state = self.backbone.rnn.step(self.backbone.embedding(tokens), cache.state)
        cache.seqlen_offset += 1
        return self.lm_head(self.backbone.norm_f(y))                        # (b, vocab)


class GRULM(RNNLM):
    config_class = GRUConfig


class LSTMLM(RNNLM):
    config_class = LSTMConfig
