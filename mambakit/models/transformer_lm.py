"""TransformerLM: the decoder-only baseline (GPT / LLaMA shape) with MambaLM's surface.

embedding (+ learned positions) → n_layer × [x + attn(norm(x)); x + mlp(norm(x))] → norm_f → tied
LM head. Positions are rotary by default (RoFormer) — relative, so a model can at least run past
its training length — or learned absolute embeddings, which cannot: the contrast the length
extrapolation experiments show. Decoding keeps a KV cache that grows with the context (O(t) work
and memory per token), where Mamba's state stays fixed.

Left padding (`attention_mask` 0 on pads) is exact: pads are masked out as keys in every call,
prefill and decode alike, and position ids count real tokens only (cumsum(mask) - 1), so a padded
row computes exactly what it would alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mambakit.config.transformer import TransformerConfig
from mambakit.models.base import LanguageModel, check_memory
from mambakit.modules.attention import CausalSelfAttention, KVState, attention_mask, first_slots, rotary_angles
from mambakit.modules.block import Block
from mambakit.modules.mlp import MLP
from mambakit.modules.norm import make_norm


@dataclass
class TransformerCache:
    """Per-layer keys and values for every position so far: grows with the context (O(t) memory).

    `key_mask` (b, capacity) is False on pad slots, which stay masked in every later step;
    `next_position` (b,) is each row's next position id (its count of real tokens so far)."""

    layers: list[KVState]
    key_mask: Tensor
    next_position: Tensor
    seqlen_offset: int = 0

    def reserve(self, n: int) -> None:
        """Make room for n more slots, doubling the capacity so growth costs O(1) amortised."""
        need, capacity = self.seqlen_offset + n, self.key_mask.shape[1]
        if need <= capacity:
            return
        capacity = max(need, 2 * capacity)
        for layer in self.layers:
            layer.grow(capacity)
        mask = self.key_mask.new_zeros(self.key_mask.shape[0], capacity)
        mask[:, : self.seqlen_offset] = self.key_mask[:, : self.seqlen_offset]
        self.key_mask = mask

    def clone(self) -> "TransformerCache":
        return TransformerCache([s.clone() for s in self.layers], self.key_mask.clone(),
                                self.next_position.clone(), self.seqlen_offset)

    def tensors(self) -> dict[str, Tensor]:
        kv = {f"layers.{i}.{n}": getattr(s, n)[:, :, : self.seqlen_offset]
              for i, s in enumerate(self.layers) for n in ("k", "v")}
        return {**kv, "key_mask": self.key_mask[:, : self.seqlen_offset], "next_position": self.next_position}

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    def select(self, rows: Tensor) -> "TransformerCache":
        """A new cache holding rows `rows` (k,) of this one (copies; repeats allowed)."""
        return TransformerCache([KVState(s.k.index_select(0, rows), s.v.index_select(0, rows)) for s in self.layers],
                                self.key_mask.index_select(0, rows), self.next_position.index_select(0, rows),
                                self.seqlen_offset)

    @staticmethod
    def concat(caches: Sequence["TransformerCache"]) -> "TransformerCache":
        """Stack the rows of several caches. A row whose cache is shorter keeps its keys in the
        first slots and masked (empty) slots up to the longest: attention only sees key_mask, and
        each row's positions come from its own next_position, so every row computes as alone."""
        t = max(c.seqlen_offset for c in caches)
        layers = [KVState(*(torch.cat([first_slots(getattr(c.layers[i], n), c.seqlen_offset, t, 2) for c in caches])
                            for n in ("k", "v")))
                  for i in range(len(caches[0].layers))]
        return TransformerCache(layers, torch.cat([first_slots(c.key_mask, c.seqlen_offset, t, 1) for c in caches]),
                                torch.cat([c.next_position for c in caches]), t)


class TransformerLayer(nn.Module):
    """Two pre-norm residual blocks: attention, then the MLP."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        norm = (cfg.d_model, cfg.norm_epsilon, cfg.rms_norm)
        self.attn = Block(CausalSelfAttention(cfg.d_model, cfg.resolved_n_head, cfg.bias), make_norm(*norm),
                          cfg.residual_in_fp32)
        self.mlp = Block(MLP(cfg.d_model, cfg.resolved_d_ff, cfg.mlp, cfg.bias), make_norm(*norm),
                         cfg.residual_in_fp32)

    def forward(self, x: Tensor, rotary, allowed, state: Optional[KVState], offset: int) -> Tensor:
        return self.mlp(self.attn(x, rotary, allowed, state, offset))


class TransformerBackbone(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos_embedding = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm)


class TransformerLM(LanguageModel):
    config_class = TransformerConfig
    tied_weights = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.backbone = TransformerBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self._init_weights()
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, zero biases, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 n_layer) (two writes per layer) to keep its variance flat.
        # The token embedding (also the tied head) takes its own std: see embedding_init_std.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.backbone.embedding.weight, std=self.config.embedding_init_std)
        for layer in self.backbone.layers:
            for block in (layer.attn, layer.mlp):
                block.mixer.out_proj.weight /= math.sqrt(2 * self.config.n_layer)

    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> TransformerCache:
        """A KV cache of max_seqlen slots (it grows past that if needed; 64 when not given)."""
        capacity = max_seqlen or 64
        keys_and_values = 2 * self.config.n_layer * batch_size * capacity * self.config.d_model * 4
        check_memory(f"a KV cache of {batch_size} x {capacity:,} positions", keys_and_values,
                     "ask for fewer new tokens (--max-new-tokens) or a shorter prompt")
        layers = [layer.attn.mixer.allocate_state(batch_size, capacity) for layer in self.backbone.layers]
        device = self.lm_head.weight.device
        return TransformerCache(layers, torch.zeros(batch_size, capacity, dtype=torch.bool, device=device),
                                torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, input_ids: Tensor, cache: Optional[TransformerCache] = None,
                attention_mask: Optional[Tensor] = None, logits_to_keep: int = 0,
                targets: Optional[Tensor] = None) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab) (the last `logits_to_keep` positions
        only, if > 0; with `targets`, the mean loss: LanguageModel.head). With `cache`, attend to the cached
        keys too and append this chunk's (prefill). `attention_mask` (b, l) is 0 on pads."""
        self.check_input_ids(input_ids)
        return self._run(input_ids, cache, self.check_attention_mask(attention_mask, input_ids), logits_to_keep,
                         targets)

    def step(self, tokens: Tensor, cache: TransformerCache) -> Tensor:
        self.check_input_ids(tokens, dims=(1,))
        return self._run(tokens[:, None], cache, None)[:, 0]                # (b, vocab)

    def _run(self, ids: Tensor, cache: Optional[TransformerCache], mask: Optional[Tensor],
             logits_to_keep: int = 0, targets: Optional[Tensor] = None) -> Tensor:
        b, l = ids.shape
        # Position ids count real tokens only, so a left-padded row sees the positions it would alone.
        steps = torch.arange(l, device=ids.device).expand(b, l) if mask is None \
            else (mask.long().cumsum(1) - 1).clamp(min=0)
        positions = steps if cache is None else cache.next_position[:, None] + steps   # (b, l)
        if self.config.positions == "learned" and l and int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is past max_seq_len "
                             f"{self.config.max_seq_len} (learned positions cannot extrapolate)")
        offset, allowed = 0, None
        if cache is not None:
            offset = cache.seqlen_offset
            cache.reserve(l)
            cache.key_mask[:, offset:offset + l] = True if mask is None else mask
            allowed = attention_mask(cache.key_mask[:, :offset + l], offset, l)   # (b, 1, l, t)
            cache.next_position += l if mask is None else mask.sum(1)
            cache.seqlen_offset += l
        elif mask is not None:
            allowed = attention_mask(mask, 0, l)
        h = self.backbone.embedding(ids)                                    # (b, l, d_model)
        rotary = None
        if self.config.positions == "learned":
            h = h + self.backbone.pos_embedding(positions)
        else:
            rotary = rotary_angles(positions, self.config.head_dim, self.config.rope_theta)
        for i, layer in enumerate(self.backbone.layers):
            h = self.run_layer(layer, h, rotary, allowed, None if cache is None else cache.layers[i], offset)
        h = self.keep_last(h, logits_to_keep).to(self.backbone.embedding.weight.dtype)
        return self.head(h, targets)                                        # (b, l, vocab)
