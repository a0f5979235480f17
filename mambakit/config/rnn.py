"""GRU / LSTM LM configs (the baselines' hyper-parameters)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mambakit.config.base import ConfigBase

_PRESETS = {
    "tiny": dict(d_model=64, n_layer=2, vocab_size=257),
    "small": dict(d_model=512, n_layer=2, vocab_size=257),
}


@dataclass
class RNNConfig(ConfigBase):
    """Fields shared by GRUConfig and LSTMConfig (not registered itself: the cell is the family)."""

    cell: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    d_model: int = 512              # input and hidden size of every cell (tied head needs them equal)
    n_layer: int = 2
    vocab_size: int = 257
    dropout: float = 0.0            # between stacked cells, training only
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    def validate(self) -> None:
        if not self.cell:
            raise ValueError("RNNConfig only holds the shared fields: use GRUConfig or LSTMConfig "
                             "(or build('gru' | 'lstm', ...))")
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            self._require_int(name)
        self._require_float("dropout", 0.0, low_inclusive=True)
        if self.dropout >= 1:
            raise ValueError(f"{type(self).__name__}.dropout must be < 1, got {self.dropout}")
        self._require_float("norm_epsilon")
        self._require_bool("rms_norm", "tie_embeddings")


@dataclass
class GRUConfig(RNNConfig):
    model_type: ClassVar[str] = "gru"
    cell: ClassVar[str] = "gru"


@dataclass
class LSTMConfig(RNNConfig):
    model_type: ClassVar[str] = "lstm"
    cell: ClassVar[str] = "lstm"
