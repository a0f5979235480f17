"""Recurrent state on disk: save a model's cache after a prompt, load it later and continue.

A recurrent model's whole memory of a sequence is its cache — for Mamba, per layer the conv
window (b, d_in, k-1) and the SSM state (b, d_in, n), a few hundred kB regardless of context
length — so a long prompt is prefilled once and every later continuation starts from the file:

    cache = model.allocate_cache(1); model(prompt_ids, cache=cache); save_state(cache, "p.state")
    out = model.generate(next_ids, cache=load_state("p.state", model))

Works for every `RecurrentCache` (Mamba, Mamba-2, S4, S4D, and hybrids whose attention layers
keep a KV cache: its slot count grows with the context, so it is read at the size it was saved).
Stored as safetensors (no pickle): one tensor per layer and state field (`layers.{i}.conv`, `layers.{i}.ssm`, ...); metadata `seqlen_offset`.
"""
from __future__ import annotations

import dataclasses
import os

from safetensors import safe_open
from safetensors.torch import save_file

from mambakit.io.atomic import atomic_write
from mambakit.io.files import CheckpointError, read_safetensors

FORMAT = "mambakit-state"


def _is_recurrent(cache) -> bool:
    """A recurrent model's cache (`RecurrentCache`): per-layer dataclass states, and `tensors()`
    lists exactly their fields. A Transformer's KV cache also holds masks and positions and grows
    with the context; an RNN cache has no per-layer states. (Duck-typed: formats sit below models.)"""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not callable(getattr(cache, "tensors", None)):
        return False
    fields = {f"layers.{i}.{f.name}" for i, state in enumerate(layers) if dataclasses.is_dataclass(state)
              for f in dataclasses.fields(state)}
    return set(cache.tensors()) == fields


def _growing_dims(state) -> dict:
    """{field: dim} of the fields whose size grows with the context (a hybrid's KV cache slots)."""
    return getattr(type(state), "growing_dims", {})


def _fits(key: str, saved, allocated, template) -> bool:
    """Same shape as the freshly allocated field, except along a growing dim."""
    _, i, name = key.split(".")
    grow = _growing_dims(template.layers[int(i)]).get(name)
    if saved.dim() != allocated.dim():
        return False
    return all(a == b for d, (a, b) in enumerate(zip(saved.shape, allocated.shape)) if d != grow)


def _ragged_layers(tensors: dict, template) -> list[int]:
    """Layers whose growing fields, as saved, do not all have one slot count."""
    ragged = []
    for i, state in enumerate(template.layers):
        sizes = {tensors[f"layers.{i}.{name}"].shape[d] for name, d in _growing_dims(state).items()
                 if f"layers.{i}.{name}" in tensors and tensors[f"layers.{i}.{name}"].dim() > d}
        if len(sizes) > 1:
            ragged.append(i)
    return ragged


def save_state(cache, path: str | os.PathLike) -> None:
    """Write `cache` (a `RecurrentCache`) to `path` atomically (a detached copy; the cache itself
    is untouched)."""
    if not _is_recurrent(cache):
        raise TypeError(f"save_state needs a recurrent model's cache, got {type(cache).__name__}")
    tensors = {k: t.detach().contiguous() for k, t in cache.tensors().items()}
    metadata = {"format": FORMAT, "seqlen_offset": str(cache.seqlen_offset)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike, model):
    """Read a state saved by `save_state` into a cache laid out for `model` (on its device).
    A file that does not fit the model raises CheckpointError naming the tensors."""
    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mambakit state file (format {metadata.get('format')!r})")
    try:
        offset = int(metadata["seqlen_offset"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt state metadata ({e!r})") from None
    first = next(iter(tensors.values()), None)
    template = model.allocate_cache(first.shape[0] if first is not None else 1)
    if not _is_recurrent(template):
        raise CheckpointError(f"{type(model).__name__} has no recurrent state to load")
    expected = template.tensors()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [f"{k}: {tuple(tensors[k].shape)} vs model {tuple(t.shape)}"
           for k, t in expected.items() if k in tensors and not _fits(k, tensors[k], t, template)]
    bad += [f"layers.{i}: fields disagree on the number of slots" for i in _ragged_layers(tensors, template)]
    if missing or unexpected or bad:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing {missing}, "
                              f"unexpected {unexpected}, shape mismatches {bad}")
    layers = [dataclasses.replace(state, **{f.name: tensors[f"layers.{i}.{f.name}"].to(
                  getattr(state, f.name).device) for f in dataclasses.fields(state)})
              for i, state in enumerate(template.layers)]
    return dataclasses.replace(template, layers=layers, seqlen_offset=offset)
