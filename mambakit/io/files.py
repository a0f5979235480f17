"""Reading checkpoint files safely, whatever wrote them: config.json, safetensors, torch `.bin`,
and sharded index files. No pickle: `.bin` goes through `torch.load(weights_only=True)`, which
refuses any object that is not a tensor or a plain container.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
# Looked for in this order; an index file names the shards that together hold the state dict.
WEIGHT_FILES = (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json", BIN_NAME, BIN_NAME + ".index.json")
# Files a tokenizer may be spread over; copied along when a checkpoint is converted.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a checkpoint directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from None


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """save_file, then the header's metadata sorted in place: safetensors writes it from a hash
    map in a random order, so identical checkpoints would differ byte for byte (and checksum)."""
    save_file(tensors, str(path), metadata=metadata)
    if not metadata or len(metadata) < 2:
        return
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= size:  # same content, same length; safetensors pads with spaces too
            f.seek(8)
            f.write(text.ljust(size))


def read_torch_bin(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict, loaded without executing pickle code."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except pickle.UnpicklingError:
        # One line, and not torch's message: it suggests turning safe loading off.
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than "
                              f"tensors, which mambakit never unpickles") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable torch file ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {bad}")
    return state


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path) if path.name.endswith(".safetensors") else read_torch_bin(path)


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: corrupt index file ({e!r})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = _read_one(index.parent / shard)
        stray = sorted(k for k in part if weight_map.get(k) != shard)
        if stray:
            raise CheckpointError(f"{index.parent / shard}: keys not listed for it in {index.name}: {stray}")
        state.update(part)
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise CheckpointError(f"{index}: keys listed but found in no shard: {absent}")
    return state


def find_weights(directory: str | os.PathLike, names: tuple[str, ...] = WEIGHT_FILES) -> Path:
    for name in names:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise CheckpointError(f"{directory}: no weights file (looked for {', '.join(names)})")


def read_weights(directory: str | os.PathLike, names: tuple[str, ...] = WEIGHT_FILES
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, path it came from) from the first of `names` that `directory` holds."""
    path = find_weights(directory, names)
    state = _read_sharded(path) if path.name.endswith(".index.json") else _read_one(path)
    return state, str(path)
