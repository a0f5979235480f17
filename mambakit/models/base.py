"""The surface every language model shares: forward, allocate_cache/step, generate, save/load.

A family subclasses `LanguageModel`, sets `config_class`, and implements `forward(input_ids,
cache=None, attention_mask=None)`, `allocate_cache(batch_size, ...)` and `step(tokens, cache)`.
Everything else — input checks, generation, checkpoints — is written once, here. That includes
empty input: every family's forward returns empty logits for a batch of 0 or a length of 0 (and
leaves a cache as it was), because convolutions, FFTs and RNN kernels refuse zero-length inputs.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from mambakit.config import ConfigBase
from mambakit.formats.checkpoint import read_checkpoint, save_model
from mambakit.io.files import CONFIG_NAME, CheckpointError
from mambakit.io.weights import load_state_into
from mambakit.models.quantize import quantize
from mambakit.modules.linear import PackedLinear
from mambakit.ops.cross_entropy import linear_cross_entropy


class LanguageModel(nn.Module, abc.ABC):
    config_class: ClassVar[type[ConfigBase]]
    # alias parameter name -> source parameter name, shared when config.tie_embeddings
    tied_weights: ClassVar[dict[str, str]] = {}
    # True when forward accepts `reset` (b, l): state zeroed where packed documents start
    supports_reset: ClassVar[bool] = False
    # Activation checkpointing per layer (training memory): keep only each layer's input and
    # recompute the layer in the backward pass. Set by `mambakit train --grad-checkpoint`.
    gradient_checkpointing: bool = False

    def __init__(self, config: ConfigBase):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        check_fits_in_memory(type(self), config)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _empty_input_gives_empty_logits(cls.__dict__["forward"])

    # -- to implement (abstract: a family missing one fails when built, not at first call) -------
    @abc.abstractmethod
    def forward(self, input_ids: Tensor, cache: Any = None, attention_mask: Optional[Tensor] = None) -> Tensor:
        """input_ids (b, l) -> logits (b, l, padded_vocab); with `cache`, continue from it and leave
        the final state there."""

    @abc.abstractmethod
    def allocate_cache(self, batch_size: int, max_seqlen: Optional[int] = None) -> Any:
        """An empty cache (recurrent state or KV cache) for `batch_size` sequences."""

    @abc.abstractmethod
    def step(self, tokens: Tensor, cache: Any) -> Tensor:
        """tokens (b,) -> next-token logits (b, vocab), advancing `cache` by one position."""

    # -- shared ---------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        if not getattr(self.config, "tie_embeddings", False):
            return
        for alias, source in self.tied_weights.items():
            owner, _, leaf = alias.rpartition(".")
            setattr(self.get_submodule(owner), leaf, self.get_parameter(source))

    def run_layer(self, layer: nn.Module, h: Tensor, *args, **kwargs) -> Tensor:
        """layer(h, *args, **kwargs), recomputed in the backward pass when gradient_checkpointing."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, h, *args, use_reentrant=False, **kwargs)
        return layer(h, *args, **kwargs)

    def head(self, h: Tensor, targets: Optional[Tensor] = None) -> Tensor:
        """norm_f and the LM head: h (b, l, d) -> logits (b, l, padded_vocab). With `targets` (b, l)
        (next-token ids, -100 where unscored), the mean next-token NLL instead (fp32 scalar, what
        F.cross_entropy gives on the logits), computed over the vocabulary in row chunks so the
        (b·l, vocab) fp32 logits and their gradient never exist whole (training memory)."""
        h = self.backbone.norm_f(h)
        if targets is None:
            return self.lm_head(h)
        if not isinstance(targets, Tensor) or tuple(targets.shape) != tuple(h.shape[:2]):
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must have the logits' (batch, seqlen) shape {tuple(h.shape[:2])}, got {shape}")
        if type(self.lm_head) is not nn.Linear:  # a quantized head has no float weight to chunk over
            return F.cross_entropy(self.lm_head(h).flatten(0, 1).float(), targets.flatten())
        return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten())

    @staticmethod
    def keep_last(h: Tensor, logits_to_keep: int) -> Tensor:
        """h (b, l, d) -> its last `logits_to_keep` positions (all if 0): generation's prefill
        needs one position's logits, and the LM head is ~30% of a 130M Mamba's prefill FLOPs."""
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0 = every position), got {logits_to_keep!r}")
        return h[:, max(h.shape[1] - logits_to_keep, 0):] if logits_to_keep else h

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Weights counted once (tied ones once), the same before and after `quantize`: int8
        weights are buffers (not trained) and count too; a quantized copy of a tied head does not."""
        int8 = [(f"{name}.weight", m.weight) for name, m in self.named_modules()
                if isinstance(m, PackedLinear) and m.fmt == "int8"]
        seen, total = set(), 0
        for name, p in [*self.named_parameters(), *int8]:
            if id(p) in seen or (exclude_embeddings and "embed" in name) or getattr(p, "_tied_copy", False):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def check_input_ids(self, input_ids: Tensor, dims: tuple[int, ...] = (2,)) -> None:
        """Reject what would otherwise be an index crash or a silent wrong answer."""
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() not in dims:
            shape = "(batch, seqlen)" if dims == (2,) else "(batch,)"
            raise ValueError(f"input_ids must be {shape}, got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):  # what nn.Embedding accepts
            raise ValueError(f"input_ids must be an int64 or int32 tensor, got {input_ids.dtype}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is out of range for vocab_size {self.vocab_size} "
                                 f"(valid ids are 0..{self.vocab_size - 1})")

    @staticmethod
    def check_attention_mask(attention_mask: Optional[Tensor], input_ids: Tensor) -> Optional[Tensor]:
        """Validate a (b, l) mask of 1 (token) and 0 (pad); returns it as bool (None passes)."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {shape}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (pad) and 1 (token)")
        return attention_mask.bool()

    def generate(self, input_ids: Tensor, max_new_tokens: int = 64, **sampling) -> Tensor:
        """Prefill with the parallel path, then decode one token at a time. Returns (b, l + new).
        Sampling options: see `mambakit.generation.generate`."""
        from mambakit.generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **sampling)

    def stream(self, input_ids: Tensor, max_new_tokens: int = 64, **sampling) -> Iterator[Tensor]:
        """Yield each new token batch (b,) as soon as it is decoded."""
        from mambakit.generation import stream

        return stream(self, input_ids, max_new_tokens=max_new_tokens, **sampling)

    def save_pretrained(self, directory: str | os.PathLike, format: str = "mambakit") -> None:
        """Write config.json + weights to `directory` in `format` ("mambakit", "transformers" or
        "mamba_ssm"; see `mambakit.formats.checkpoint`)."""
        save_model(self, directory, format=format)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        """A `cls` model from a checkpoint directory in any format it can be read from
        (`mambakit.models.load_model` loads whichever family a directory holds)."""
        config_class = getattr(cls, "config_class", None)
        if config_class is None:
            raise TypeError(f"{cls.__name__} is not a model family; call from_pretrained on one "
                            f"(MambaLM, ...) or use mambakit.models.load_model")
        ckpt = read_checkpoint(directory, config_class)
        with torch.device("meta"):
            model = cls(ckpt.config)
        model = model.to_empty(device=device)
        model.tie_weights()  # to_empty makes every parameter a new object
        if ckpt.quantization is not None:
            try:
                quantize(model, ckpt.quantization)  # the packed layout; the weights come next
            except ValueError as e:
                raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: {e}") from None
        load_state_into(model, ckpt.state, ckpt.source)
        return model.eval()


def _empty_input_gives_empty_logits(forward):
    """Wrap a family's forward: (b, 0) or (0, l) input_ids -> zeros (b, l, padded_vocab), no work
    (with `targets`: a nan loss, the mean over no tokens, as F.cross_entropy gives)."""
    @functools.wraps(forward)
    def guarded(self, input_ids, *args, **kwargs):
        if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.numel() == 0:
            self.check_input_ids(input_ids)
            if kwargs.get("targets") is not None:
                return torch.full((), float("nan"), device=self.device)
            return torch.zeros(*input_ids.shape, self.config.padded_vocab_size, device=self.device)
        return forward(self, input_ids, *args, **kwargs)

    return guarded


def total_memory_bytes() -> int:
    """Physical memory of this machine (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


_sizing = False  # set while estimate_parameters builds its small copies (they skip the check)


@functools.lru_cache(maxsize=256)
def _estimate(cls, config_json: str) -> int:
    global _sizing
    config = cls.config_class.from_dict(json.loads(config_json))
    depth = getattr(config, "n_layer", None)
    _sizing = True
    try:
        with torch.device("meta"):
            if not isinstance(depth, int) or depth <= 2:
                return sum(p.numel() for p in cls(config).parameters())
            one, two = (sum(p.numel() for p in cls(dataclasses.replace(config, n_layer=k)).parameters())
                        for k in (1, 2))
        return one + (depth - 1) * (two - one)
    except (RuntimeError, OverflowError) as e:
        if "overflow" in str(e).lower() or isinstance(e, OverflowError):
            return 2**63   # a single tensor's element count does not fit in int64
        raise
    finally:
        _sizing = False


def estimate_parameters(cls, config: ConfigBase) -> int | None:
    """Parameters of `cls(config)`, counted on the meta device from 1- and 2-layer copies, so a
    config with n_layer=1e9 costs nothing to size. None when it cannot be sized that way."""
    try:
        return _estimate(cls, json.dumps(config.to_dict(), sort_keys=True))
    except (RuntimeError, ValueError, OverflowError, TypeError):
        return None


def check_fits_in_memory(cls, config: ConfigBase) -> None:
    """Refuse, with the estimate, a config whose fp32 weights alone exceed this machine's memory
    (d_model=1e12 would crash in the allocator and n_layer=1e9 spend minutes building layers)."""
    if _sizing:
        return
    params = estimate_parameters(cls, config)
    if params is not None:
        check_memory(f"this {type(config).__name__}'s weights", params * 4,
                     "check d_model, n_layer and vocab_size")


def check_memory(what: str, nbytes: int, advice: str) -> None:
    """ValueError with the estimate when `nbytes` exceed this machine's physical memory."""
    ram = total_memory_bytes()
    if not ram or nbytes <= ram:
        return
    size = "more than an int64 can count" if nbytes >= 2**63 else f"about {nbytes / 2**30:,.1f} GiB"
    raise ValueError(f"{what} would need {size}, more than this machine's {ram / 2**30:,.0f} GiB "
                     f"of memory; {advice}")
