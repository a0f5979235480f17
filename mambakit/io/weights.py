"""State dicts on their way to and from files: what is saved (tied aliases once), the strict load
that names every missing, unexpected or mis-shaped key, and a model directory written in the order
that makes it safe (weights first, config.json last: a directory with a config is complete)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from mambakit.io.atomic import atomic_write, atomic_write_text
from mambakit.io.files import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, save_safetensors


def save_weights_dir(directory: Path, config, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """A mambakit checkpoint directory: `state` as model.safetensors, `config` (+ `extra` fields,
    e.g. "quantization") as config.json."""
    metadata = {"format": "pt", "library": "mambakit"}
    write_model_dir(directory, {**config.to_dict(), **(extra or {})}, lambda d: atomic_write(
        d / WEIGHTS_NAME, lambda tmp: save_safetensors(state, tmp, metadata=metadata)))


def write_model_dir(directory: Path, config: dict, write_weights: Callable[[Path], None]) -> None:
    """Weights via `write_weights(directory)`, then config.json (last: it marks the dir complete)."""
    write_weights(directory)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def export_state(model, keep_tied: bool = False, state: dict | None = None) -> dict[str, torch.Tensor]:
    """`state` (default: the model's own state dict) as it is saved: detached, contiguous, and
    without the aliases of tied weights unless `keep_tied`."""
    aliases = set() if keep_tied else tied_aliases(model)
    state = model.state_dict() if state is None else state
    return {k: t.detach().contiguous() for k, t in state.items() if k not in aliases}


def tied_aliases(model) -> set[str]:
    """Names of parameters that are the same object as an earlier one (lm_head tied to embedding)."""
    seen: set[int] = set()
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


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
    # A stored copy of a tied weight must agree with its source, or one of them would silently win.
    sources = {alias: src for alias, src in getattr(model, "tied_weights", {}).items() if alias in tied}
    differ = [a for a, s in sources.items() if a in state and s in state and not torch.equal(state[a], state[s])]
    if differ:
        raise CheckpointError(f"{source}: {differ} differ from the weights they are tied to "
                              f"({[sources[a] for a in differ]}); set tie_embeddings false to keep both")
    model.load_state_dict(state, strict=False)
