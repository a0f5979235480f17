"""Decoder-only Transformer LM config."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from mambakit.config.base import LMConfig, pad_to_multiple

MLP_KINDS = ("swiglu", "gelu")
POSITIONS = ("rope", "learned")


@dataclass
class TransformerConfig(LMConfig):
    model_type: ClassVar[str] = "transformer"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(d_model=64, n_layer=2, n_head=4, vocab_size=257),
        "small": dict(d_model=256, n_layer=4, n_head=4, vocab_size=257),
        "gpt2-small": dict(d_model=768, n_layer=12, n_head=12, vocab_size=50257, mlp="gelu",
                           positions="learned", max_seq_len=1024, rms_norm=False, bias=True),
    }

    d_model: int = 768
    n_layer: int = 12
    n_head: int | str = "auto"      # "auto": about one head per 64 channels (a divisor of d_model)
    vocab_size: int = 50277
    d_ff: int | str = "auto"        # "auto": 4 d_model for GELU, 8/3 d_model for SwiGLU (same params)
    mlp: str = "swiglu"
    positions: str = "rope"
    max_seq_len: int = 2048         # learned positions: the table size, a hard limit
    rope_theta: float = 10000.0
    bias: bool = False
    # N(0, std) for the token embedding (the tied LM head). GPT-2's 0.02 suits LM widths; at the
    # synthetic tasks' d_model 64 it kept a 2-layer model at chance on induction heads for 2000
    # steps where N(0, 1) (PyTorch's and T5's embedding init) solved it in 500-750 (README).
    embedding_init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        self._require_int("max_seq_len")
        for name in ("n_head", "d_ff"):
            if getattr(self, name) != "auto":
                self._require_int(name)
        self._require_choice("mlp", MLP_KINDS)
        self._require_choice("positions", POSITIONS)
        self._require_float("rope_theta")
        self._require_bool("bias")
        self._require_float("embedding_init_std")
        h = self.resolved_n_head
        if self.d_model % h:
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be divisible by "
                             f"n_head ({h})")
        if self.positions == "rope" and (self.d_model // h) % 2:
            raise ValueError(f"TransformerConfig: rotary positions need an even head size, got "
                             f"d_model / n_head = {self.d_model // h}")

    @property
    def resolved_n_head(self) -> int:
        if self.n_head != "auto":
            return self.n_head
        for h in range(max(1, self.d_model // 64), 0, -1):
            if self.d_model % h == 0 and (self.positions != "rope" or (self.d_model // h) % 2 == 0):
                return h
        raise ValueError(f"TransformerConfig: no head count gives rotary positions an even head "
                         f"size for d_model {self.d_model}; use an even d_model")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.resolved_n_head

    @property
    def resolved_d_ff(self) -> int:
        if self.d_ff != "auto":
            return self.d_ff
        return 4 * self.d_model if self.mlp == "gelu" else pad_to_multiple(math.ceil(8 * self.d_model / 3), 8)
