"""S4LM and S4DLM: embedding → n_layer × (norm → S4/S4D mixer, residual) → norm_f → tied LM head.

The same skeleton as MambaLM (module names backbone.embedding / layers.i.mixer / norm_f, lm_head),
with the selective mixer swapped for an LTI one, so tasks and benchmarks compare them with one flag.
`set_mode("conv" | "recurrent")` is the LSSL switch for every layer; `step` always recurs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from mambakit.config import ConfigBase, pad_to_multiple
from mambakit.models.base import LanguageModel
from mambakit.modules.block import Block
from mambakit.modules.norm import make_norm
from mambakit.modules.s4 import MODES, LTIMixer, S4DMixer, S4Mixer, S4State

_PRESETS = {
    "tiny": dict(d_model=64, n_layer=2, vocab_size=257, d_state=32),
    "small": dict(d_model=256, n_layer=4, vocab_size=257, d_state=64),
}


@dataclass
class _LTIConfig(ConfigBase):
    """Fields shared by S4 and S4D (not registered itself: each family has its own model_type)."""

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 257
    d_state: int = 64               # real state size N; the layer keeps N/2 complex pairs
    dt_min: float = 0.001
    dt_max: float = 0.1
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def validate(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "pad_vocab_size_multiple"):
            self._require_int(name)
        if self.d_state % 2:
            raise ValueError(f"{type(self).__name__}.d_state must be even (conjugate pairs), got {self.d_state}")
        for name in ("dt_min", "dt_max", "norm_epsilon"):
            self._require_float(name)
        if self.dt_min > self.dt_max:
            raise ValueError(f"{type(self).__name__}.dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
        self._require_bool("rms_norm", "residual_in_fp32", "tie_embeddings")

    @property
    def padded_vocab_size(self) -> int:
        return pad_to_multiple(self.vocab_size, self.pad_vocab_size_multiple)


@dataclass
class S4Config(_LTIConfig):
    model_type: ClassVar[str] = "s4"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    def make_mixer(self) -> LTIMixer:
        return S4Mixer(self.d_model, self.d_state, self.dt_min, self.dt_max)


@dataclass
class S4DConfig(_LTIConfig):
    model_type: ClassVar[str] = "s4d"
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    init: str = "lin"               # "lin" (S4D-Lin) or "inv" (S4D-Inv)

    def validate(self) -> None:
        super().validate()
        self._require_choice("init", ("lin", "inv"))

    def make_mixer(self) -> LTIMixer:
        return S4DMixer(self.d_model, self.d_state, self.dt_min, self.dt_max, self.init)


@dataclass
class S4Cache:
    """Per-layer SSM state, (b, d_model, d_state/2) complex each: O(1) in the context length."""

    layers: list[S4State]
    seqlen_offset: int = 0

    def clone(self) -> "S4Cache":
        return S4Cache([s.clone() for s in self.layers], self.seqlen_offset)


class _LTIBackbone(nn.Module):
    def __init__(self, cfg: _LTIConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(cfg.make_mixer(), make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm), cfg.residual_in_fp32)
            for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.d_model, cfg.norm_epsilon, cfg.rms_norm)


class _LTILM(LanguageModel):
    tied_weights = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config: _LTIConfig):
        super().__init__(config)
        self.backbone = _LTIBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        self.tie_weights()

    def set_mode(self, mode: str) -> None:
        """"conv" (FFT convolution: training, long prefill) or "recurrent" (step by step) everywhere."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        for layer in self.backbone.layers:
            layer.mixer.mode = mode

    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> S4Cache:
        return S4Cache([layer.mixer.allocate_state(batch_size) for layer in self.backbone.layers])

    def forward(self, input_ids: Tensor, cache: Optional[S4Cache] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab). With `cache`, continue from it and leave
        the final state there (prefill). `attention_mask` (b, l), 0 on left padding, is exact from a
        fresh cache (pads enter every layer as zeros, keeping its state at zero)."""
        self.check_input_ids(input_ids)
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must match input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        h = self.backbone.embedding(input_ids)                          # (b, l, d_model)
        for i, layer in enumerate(self.backbone.layers):
            h = layer(h, None if cache is None else cache.layers[i], attention_mask)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.lm_head(self.backbone.norm_f(h.to(self.lm_head.weight.dtype)))  # (b, l, vocab)

    def step(self, tokens: Tensor, cache: S4Cache) -> Tensor:
        self.check_input_ids(tokens, dims=(1,))
        h = self.backbone.embedding(tokens)                             # (b, d_model)
        for layer, state in zip(self.backbone.layers, cache.layers):
            h = layer.step(h, state)
        cache.seqlen_offset += 1
        return self.lm_head(self.backbone.norm_f(h.to(self.lm_head.weight.dtype)))  # (b, vocab)


class S4LM(_LTILM):
    config_class = S4Config


class S4DLM(_LTILM):
    config_class = S4DConfig
