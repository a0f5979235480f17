"""Next-token loss, bits per byte and perplexity.

bits/byte = total nats / ln 2 / total bytes of the predicted text. The byte count comes from the
tokenizer's per-token byte lengths, so the figure is comparable across tokenizers (a BPE token
holding 4 bytes counts 4; eos counts none).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.data.packing import Batch, eval_batches
from mambakit.data.tokens import TokenDataset

LN2 = math.log(2.0)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device | str, dtype: str):
    """bf16 autocast (CPU or GPU) for --dtype bf16; a no-op for fp32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def token_nll(model, batch: Batch, core=None) -> Tensor:
    """Per-token negative log-likelihood (b, l) in nats. `core` is the unwrapped model (DDP)."""
    core = model if core is None else core
    kwargs = {"reset": batch.reset} if batch.reset is not None and core.supports_reset else {}
    logits = model(batch.inputs, **kwargs)                                 # (b, l, v)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    return nll.view_as(batch.targets)                                      # (b, l)


def mean_loss(model, batch: Batch, core=None) -> Tensor:
    """Mean next-token NLL of `batch` (fp32 scalar, nats) for training: the model's chunked LM-head
    loss (LanguageModel.head), so the (b·l, vocab) logits never exist whole. `core` as token_nll."""
    core = model if core is None else core
    kwargs = {"reset": batch.reset} if batch.reset is not None and core.supports_reset else {}
    return model(batch.inputs, targets=batch.targets, **kwargs)


def summarize(nats: float, n_tokens: int, n_bytes: int) -> dict:
    loss = nats / max(n_tokens, 1)
    return {"loss": loss, "bits_per_byte": nats / LN2 / max(n_bytes, 1),
            "perplexity": math.exp(min(loss, 700.0)), "tokens": n_tokens, "bytes": n_bytes}


@torch.no_grad()
def evaluate(model, data: TokenDataset, seq_len: int = 256, batch_size: int = 8, n_batches: int = 8,
             dtype: str = "fp32") -> dict:
    """Loss (nats/token), bits/byte and perplexity on fixed, evenly spaced windows of `data`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nats, n_tokens, n_bytes = 0.0, 0, 0
    for batch in eval_batches(data, seq_len, batch_size, n_batches):
        batch = Batch(batch.inputs.to(device), batch.targets.to(device),
                      None if batch.reset is None else batch.reset.to(device))
        with autocast(device, dtype):
            nll = token_nll(model, batch)
        nats += float(nll.double().sum())
        n_tokens += batch.n_tokens
        n_bytes += int(data.byte_lengths[batch.targets.cpu()].sum())
    model.train(was_training)
    return summarize(nats, n_tokens, n_bytes)
