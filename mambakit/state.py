"""Recurrent state on disk: save a MambaCache after a prompt, load it later and continue.

A Mamba model's whole memory of a sequence is its cache — per layer the conv window (b, d_in, k-1)
and the SSM state (b, d_in, n), a few hundred kB regardless of context length — so a long
prompt is prefilled once and every later continuation starts from the file:

    cache = model.allocate_cache(1); model(prompt_ids, cache=cache); save_state(cache, "p.state")
    out = model.generate(next_ids, cache=load_state("p.state", model))

Stored as safetensors (no pickle): tensors `layers.{i}.conv`, `layers.{i}.ssm`; metadata
`seqlen_offset` and `n_layer`.
"""
from __future__ import annotations

import os
from safetensors.torch import save_file

from mambakit.io.atomic import atomic_write
from mambakit.io.files import CheckpointError, read_safetensors
from mambakit.models.mamba_lm import MambaCache
from mambakit.modules.mamba import MambaState

FORMAT = "mambakit-state"


def save_state(cache: MambaCache, path: str | os.PathLike) -> None:
    """Write `cache` to `path` atomically (a detached copy; the cache itself is untouched)."""
    if not isinstance(cache, MambaCache):
        raise TypeError(f"save_state needs a MambaCache, got {type(cache).__name__}")
    tensors = {}
    for i, layer in enumerate(cache.layers):
        tensors[f"layers.{i}.conv"] = layer.conv.detach().contiguous()
        tensors[f"layers.{i}.ssm"] = layer.ssm.detach().contiguous()
    metadata = {"format": FORMAT, "seqlen_offset": str(cache.seqlen_offset), "n_layer": str(len(cache.layers))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike, model=None, device=None) -> MambaCache:
    """Read a state saved by `save_state`. With `model`, check it fits that model's cache layout
    (a mismatch raises CheckpointError naming the tensors) and move it to the model's device."""
    from safetensors import safe_open

    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mambakit state file (format {metadata.get('format')!r})")
    try:
        n_layer, offset = int(metadata["n_layer"]), int(metadata["seqlen_offset"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt state metadata ({e!r})") from None
    expected = {f"layers.{i}.{part}" for i in range(n_layer) for part in ("conv", "ssm")}
    if set(tensors) != expected:
        raise CheckpointError(f"{path}: missing {sorted(expected - set(tensors))}, "
                              f"unexpected {sorted(set(tensors) - expected)}")
    cache = MambaCache([MambaState(tensors[f"layers.{i}.conv"], tensors[f"layers.{i}.ssm"])
                        for i in range(n_layer)], offset)
    if model is not None:
        _check_fits(cache, model, str(path))
        device = device or model.device
    if device is not None:
        cache = MambaCache([MambaState(s.conv.to(device), s.ssm.to(device)) for s in cache.layers],
                           cache.seqlen_offset)
    return cache


def _check_fits(cache: MambaCache, model, source: str) -> None:
    batch = cache.layers[0].ssm.shape[0] if cache.layers else 0
    ref = model.allocate_cache(batch)
    if len(ref.layers) != len(cache.layers):
        raise CheckpointError(f"{source}: state has {len(cache.layers)} layers, model has {len(ref.layers)}")
    bad = [f"layers.{i}.{part}: {tuple(getattr(s, part).shape)} vs model {tuple(getattr(r, part).shape)}"
           for i, (s, r) in enumerate(zip(cache.layers, ref.layers)) for part in ("conv", "ssm")
           if getattr(s, part).shape != getattr(r, part).shape]
    if bad:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(bad)}")
