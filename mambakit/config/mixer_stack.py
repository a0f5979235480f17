"""Fields of mamba_ssm's MixerModel shared by Mamba and Mamba-2: hybrid stacks with attention layers,
and the MLP after each mixer (d_intermediate)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mambakit.config.base import LMConfig

# attn_cfg keys: mamba_ssm's MHA arguments (modules/mha.py), and the values we support for the
# restricted ones
ATTN_CFG_KEYS = ("num_heads", "num_heads_kv", "head_dim", "qkv_proj_bias", "out_proj_bias",
                 "softmax_scale", "causal", "rotary_emb_dim", "rotary_emb_base",
                 "rotary_emb_interleaved", "d_conv", "mlp_dim")
ATTN_CFG_FIXED = {"causal": True, "rotary_emb_interleaved": False, "d_conv": 0, "mlp_dim": 0}


@dataclass
class MixerStackConfig(LMConfig):
    """mamba_ssm's MixerModel fields for hybrid stacks, shared by Mamba and Mamba-2: attention
    layers (mamba_ssm's MHA, arguments in `attn_cfg`) at the indices in `attn_layer_idx`, and
    `d_intermediate` > 0 for a GatedMLP (modules/mlp.py) after every layer's mixer."""

    attn_layer_idx: list[int] = field(default_factory=list)
    attn_cfg: dict[str, Any] = field(default_factory=dict)
    d_intermediate: int = 0

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if isinstance(self.d_intermediate, bool) or not isinstance(self.d_intermediate, int) \
                or self.d_intermediate < 0:
            raise ValueError(f"{name}.d_intermediate must be an int >= 0 (0: no MLP), got {self.d_intermediate!r}")
        idx = self.attn_layer_idx
        if not isinstance(idx, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in idx) \
                or len(set(idx)) != len(idx) or any(not 0 <= i < self.n_layer for i in idx):
            raise ValueError(f"{name}.attn_layer_idx must be distinct layer indices in 0..{self.n_layer - 1}, "
                             f"got {idx!r}")
        self.attn_layer_idx = sorted(idx)
        if not isinstance(self.attn_cfg, dict):
            raise ValueError(f"{name}.attn_cfg must be an object, got {self.attn_cfg!r}")
        unknown = sorted(set(self.attn_cfg) - set(ATTN_CFG_KEYS))
        if unknown:
            raise ValueError(f"{name}.attn_cfg: unknown key(s) {unknown}; known: {list(ATTN_CFG_KEYS)}")
        if idx and "num_heads" not in self.attn_cfg:
            raise ValueError(f"{name}.attn_cfg must give num_heads for the attention layers {list(idx)}")
        for key, value in ATTN_CFG_FIXED.items():
            if self.attn_cfg.get(key, value) != value:
                raise ValueError(f"{name}.attn_cfg.{key}={self.attn_cfg[key]!r} is not supported "
                                 f"(only {value!r})")
