"""Causal multi-head self-attention (Vaswani et al. 2017) with rotary positions and a KV cache.

Glossary: b batch, l new tokens, t keys so far (cache + new), h heads, hd = d_model / h.
Positions are the model's business: it passes rotary (cos, sin) — or nothing, when it adds learned
absolute positions to the embeddings — and a boolean `allowed` (b, 1, l, t) mask built once per
forward by `attention_mask` below, shared by every layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotary_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """positions (b, l) int -> cos, sin (b, 1, l, hd/2) in fp32 (RoFormer, Su et al. 2021, eq. 34).

    Computed from the positions on every call rather than cached in a buffer: a buffer would be
    left uninitialised when checkpoints are loaded into a model built on the meta device."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = theta ** -exponents                                          # (hd/2,)
    angles = positions[:, None, :, None].float() * inv_freq                # (b, 1, l, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_i, x_{i+hd/2}) pair of x (b, h, l, hd) by its position's angle ("rotate half",
    the GPT-NeoX / LLaMA layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)                                   # (b, h, l, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attention_mask(key_mask: Tensor, offset: int, length: int) -> Tensor:
    """Which keys each new query may see: key_mask (b, t) True on real tokens -> allowed (b, 1, l, t).

    Query i sits at cache slot offset + i and sees real keys at slots <= its own. It always sees
    itself, so a pad query never has an all-masked row (softmax over nothing is NaN, and a NaN at a
    pad would leak into real rows through 0 * NaN in the next layer's attention)."""
    t = key_mask.shape[1]
    q_slot = torch.arange(offset, offset + length, device=key_mask.device)[:, None]   # (l, 1)
    k_slot = torch.arange(t, device=key_mask.device)[None, :]                         # (1, t)
    allowed = (k_slot <= q_slot) & key_mask[:, None, :]                               # (b, l, t)
    return (allowed | (k_slot == q_slot))[:, None]                                    # (b, 1, l, t)


def first_slots(x: Tensor, n: int, t: int, dim: int) -> Tensor:
    """The first n cache slots of x along `dim`, zero-padded to t: how caches of different lengths
    join one batch (the padded slots are masked out as keys by the caller's key mask)."""
    return F.pad(x.narrow(dim, 0, n), (0, 0) * (x.dim() - 1 - dim) + (0, t - n))


@dataclass
class KVState:
    """One layer's keys and values, (b, h, capacity, hd) each; slots past the cache length are unused."""

    k: Tensor
    v: Tensor

    def write(self, k: Tensor, v: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """Store new k, v (b, h, l, hd) at slots offset.. and return every key and value so far."""
        end = offset + k.shape[2]
        self.k[:, :, offset:end] = k
        self.v[:, :, offset:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]                     # (b, h, t, hd)

    def grow(self, capacity: int) -> None:
        """Reallocate with `capacity` (>= the current) slots, keeping every stored one."""
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
            new[:, :, :old.shape[2]] = old
            setattr(self, name, new)

    def clone(self) -> "KVState":
        return KVState(self.k.clone(), self.v.clone())


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, bias: bool = False):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def allocate_state(self, batch_size: int, capacity: int, device=None, dtype=None) -> KVState:
        w = self.qkv_proj.weight
        dtype = dtype or (w.dtype if w.is_floating_point() else torch.float32)  # int8 weights: fp32 keys
        shape = (batch_size, self.n_head, capacity, self.head_dim)
        return KVState(torch.zeros(shape, device=device or w.device, dtype=dtype),
                       torch.zeros(shape, device=device or w.device, dtype=dtype))

    def forward(self, x: Tensor, rotary: Optional[tuple[Tensor, Tensor]] = None,
                allowed: Optional[Tensor] = None, state: Optional[KVState] = None,
                offset: int = 0) -> Tensor:
        """x (b, l, d_model) -> (b, l, d_model). Without `allowed`, plain causal attention over x
        (the training path); with `state`, the new keys/values are appended at slot `offset` and
        attention runs over the whole cache, as `allowed` says."""
        b, l, d = x.shape
        q, k, v = self.qkv_proj(x).view(b, l, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:                                              # q, k, v: (b, h, l, hd)
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if state is not None:
            k, v = state.write(k, v, offset)                                # (b, h, t, hd)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if allowed is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (b, h, l, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, d))
