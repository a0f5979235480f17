"""Our checkpoint format: a directory with config.json + model.safetensors, written atomically.

No pickle anywhere: weights are safetensors, the config is JSON. Tied weights are stored once
(safetensors refuses shared storage) and re-tied on load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mambakit.io.atomic import atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def save_model(model, directory: str | os.PathLike) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    aliases = tied_aliases(model)
    state = {k: t.detach().contiguous() for k, t in model.state_dict().items() if k not in aliases}
    atomic_write(directory / WEIGHTS_NAME,
                 lambda tmp: save_file(state, tmp, metadata={"format": "pt", "library": "mambakit"}))
    model.config.save(directory / CONFIG_NAME)  # config last: a dir with a config is complete


def tied_aliases(model) -> set[str]:
    """Names of parameters that are the same object as an earlier one (lm_head tied to embedding)."""
    seen: set[int] = set()
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


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


def load_state_into(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that reports every missing, unexpected or mis-shaped key at once."""
    expected = model.state_dict()
    tied = tied_aliases(model)
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes)}]")
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    from mambakit.models import model_class

    data = read_config(directory)
    model_type = data.get("model_type", "mamba")
    try:
        cls = model_class(model_type)
        config = cls.config_class.from_dict(data)
    except ValueError as e:
        raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: {e}") from None
    weights = Path(directory) / WEIGHTS_NAME
    state = read_safetensors(weights)
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty makes every parameter a new object
    load_state_into(model, state, str(weights))
    return model.eval()
