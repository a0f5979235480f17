"""mamba_ssm's MHA: the attention layer that hybrid Mamba stacks place at `attn_layer_idx`.

Same names and layout as mamba_ssm/modules/mha.py, so hybrid checkpoints load key for key:
in_proj → [q (h·hd), k (h_kv·hd), v (h_kv·hd)], grouped-query heads (h_kv divides h), rotary
positions on the first `rotary_emb_dim` channels of each head (GPT-NeoX "rotate half", flash_attn's
non-interleaved RotaryEmbedding), causal softmax attention, out_proj.

As a mixer of MixerLM it has the SSM mixers' surface — allocate_state / forward(h, state, mask) /
step — and its state is a KV cache whose fields are all batch-first, so one RecurrentCache holds
SSM states and KV caches side by side. Glossary: b batch, l new tokens, t keys so far, h heads,
h_kv key/value heads, hd head size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.config import ATTN_CFG_FIXED
from mambakit.modules.attention import apply_rotary, first_slots, rotary_angles
from mambakit.modules.attention import attention_mask as allowed_keys


@dataclass
class KVCacheState:
    """One attention layer's cache: k, v (b, h_kv, capacity, hd); key_mask (b, capacity) True on
    real tokens; n_real (b,) real tokens absorbed per row (rotary positions count only those);
    used (b,) slots filled (equal across rows: rows advance together)."""

    k: Tensor
    v: Tensor
    key_mask: Tensor
    n_real: Tensor
    used: Tensor

    # The slot dimension of each field that has one: it grows with the context (`reserve`), so a
    # saved cache may hold more slots than a freshly allocated one (formats/state.py reads this).
    growing_dims = {"k": 2, "v": 2, "key_mask": 1}

    def clone(self) -> "KVCacheState":
        return KVCacheState(self.k.clone(), self.v.clone(), self.key_mask.clone(), self.n_real.clone(),
                            self.used.clone())

    @staticmethod
    def concat(states: "list[KVCacheState]") -> "KVCacheState":
        """Stack rows of caches of different lengths: each keeps its keys in the first slots and
        masked empty slots up to the longest, so every row attends exactly as alone (positions
        come from its own n_real)."""
        t = max(int(s.used[0]) if s.used.numel() else 0 for s in states)
        used = [int(s.used[0]) if s.used.numel() else 0 for s in states]
        k, v, mask = ([first_slots(getattr(s, n), u, t, dim) for s, u in zip(states, used)]
                      for n, dim in (("k", 2), ("v", 2), ("key_mask", 1)))
        n_real = torch.cat([s.n_real for s in states])
        return KVCacheState(torch.cat(k), torch.cat(v), torch.cat(mask), n_real, torch.full_like(n_real, t))

    def reserve(self, end: int) -> None:
        """Grow the slots (doubling) so that `end` of them fit."""
        capacity = self.k.shape[2]
        if end <= capacity:
            return
        new = max(end, 2 * capacity, 16)
        pad = new - capacity
        self.k = F.pad(self.k, (0, 0, 0, pad))
        self.v = F.pad(self.v, (0, 0, 0, pad))
        self.key_mask = F.pad(self.key_mask, (0, pad))


class MHA(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, num_heads_kv: Optional[int] = None,
                 head_dim: Optional[int] = None, qkv_proj_bias: bool = True, out_proj_bias: bool = True,
                 softmax_scale: Optional[float] = None, causal: bool = True, rotary_emb_dim: int = 0,
                 rotary_emb_base: float = 10000.0, rotary_emb_interleaved: bool = False, d_conv: int = 0,
                 mlp_dim: int = 0, layer_idx: int = 0):
        super().__init__()
        given = dict(causal=causal, rotary_emb_interleaved=rotary_emb_interleaved, d_conv=d_conv, mlp_dim=mlp_dim)
        for key, value in given.items():
            if value != ATTN_CFG_FIXED[key]:
                raise ValueError(f"attn_cfg.{key}={value!r} is not supported (only {ATTN_CFG_FIXED[key]!r})")
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv or num_heads
        if num_heads % self.num_heads_kv:
            raise ValueError(f"attn_cfg: num_heads_kv ({self.num_heads_kv}) must divide num_heads ({num_heads})")
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(f"attn_cfg: num_heads ({num_heads}) must divide d_model ({embed_dim}) "
                             f"unless head_dim is given")
        self.head_dim = head_dim or embed_dim // num_heads
        if rotary_emb_dim % 2 or rotary_emb_dim > self.head_dim:
            raise ValueError(f"attn_cfg.rotary_emb_dim must be even and <= head_dim ({self.head_dim}), "
                             f"got {rotary_emb_dim}")
        self.rotary_emb_dim, self.rotary_emb_base = rotary_emb_dim, rotary_emb_base
        self.softmax_scale, self.layer_idx = softmax_scale, layer_idx
        q_dim, kv_dim = num_heads * self.head_dim, self.num_heads_kv * self.head_dim
        self.in_proj = nn.Linear(embed_dim, q_dim + 2 * kv_dim, bias=qkv_proj_bias)
        self.out_proj = nn.Linear(q_dim, embed_dim, bias=out_proj_bias)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> KVCacheState:
        """An empty cache; it grows as tokens arrive (see KVCacheState.reserve)."""
        w = self.in_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        kv = torch.zeros(batch_size, self.num_heads_kv, 0, self.head_dim, device=device, dtype=dtype)
        zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
        return KVCacheState(kv, kv.clone(), torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
                            zeros, zeros.clone())

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary on the first rotary_emb_dim channels of x (b, heads, l, hd); the rest pass through."""
        r = self.rotary_emb_dim
        return torch.cat([apply_rotary(x[..., :r], cos, sin), x[..., r:]], dim=-1)

    def forward(self, hidden: Tensor, state: Optional[KVCacheState] = None,
                attention_mask: Optional[Tensor] = None, reset: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model); with `state`, attends over every cached token
        and appends these. `attention_mask` (b, l) is 0 on left padding."""
        if reset is not None:
            raise ValueError("reset (packed documents) is not supported by attention layers; "
                             "use one document per row")
        b, l, _ = hidden.shape
        h, hk, hd = self.num_heads, self.num_heads_kv, self.head_dim
        q, k, v = self.in_proj(hidden).split([h * hd, hk * hd, hk * hd], dim=-1)
        q = q.view(b, l, h, hd).transpose(1, 2)                            # (b, h, l, hd)
        k, v = k.view(b, l, hk, hd).transpose(1, 2), v.view(b, l, hk, hd).transpose(1, 2)
        real = (torch.ones(b, l, dtype=torch.bool, device=hidden.device) if attention_mask is None
                else attention_mask.bool())                                # (b, l)
        if self.rotary_emb_dim:
            start = 0 if state is None else state.n_real[:, None]
            positions = (start + real.long().cumsum(1) - 1).clamp(min=0)   # real tokens only
            cos, sin = rotary_angles(positions, self.rotary_emb_dim, self.rotary_emb_base)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        offset = 0 if state is None else int(state.used[0])
        if state is not None:
            end = offset + l
            state.reserve(end)
            state.k[:, :, offset:end], state.v[:, :, offset:end] = k, v
            state.key_mask[:, offset:end] = real
            k, v, keys = state.k[:, :, :end], state.v[:, :, :end], state.key_mask[:, :end]
            state.n_real = state.n_real + real.sum(1)
            state.used = state.used + l
        else:
            keys = real
        k = k.repeat_interleave(h // hk, dim=1).to(q.dtype)                # (b, h, t, hd)
        v = v.repeat_interleave(h // hk, dim=1).to(q.dtype)
        if state is None and attention_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_keys(keys, offset, l),
                                               scale=self.softmax_scale)   # (b, h, l, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, h * hd))      # (b, l, d_model)

    def step(self, hidden: Tensor, state: KVCacheState) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model), appended to the cache."""
        return self.forward(hidden[:, None], state)[:, 0]
