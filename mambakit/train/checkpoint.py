"""Training checkpoints: everything needed to continue a run exactly, written atomically.

root/step-000120/  config.json + model.safetensors (a loadable model directory on its own),
                   optimizer.safetensors (AdamW moments and steps, plus RNG state),
                   trainer_state.json (step, param groups, seed, metrics so far) — written last.
root/latest        name of the newest complete checkpoint, replaced atomically.

Each checkpoint is assembled in a temporary folder and renamed into place, so a crash or a full
disk mid-write leaves the previous checkpoint untouched. No pickle: safetensors + JSON.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from mambakit.io.atomic import atomic_write, atomic_write_text, default_permissions
from mambakit.io.files import WEIGHTS_NAME, CheckpointError, read_safetensors
from mambakit.io.weights import export_state, save_weights_dir

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"
LATEST = "latest"
PREFIX = "step-"


def gather_state(model, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts keyed by parameter name. Under FSDP this
    is a collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer,
                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _flatten_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for name, entries in optim_state["state"].items():
        for key, value in entries.items():
            tensors[f"state/{name}/{key}"] = torch.as_tensor(value).contiguous()
    return tensors, optim_state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        kind, name, leaf = key.split("/", 2) if key.count("/") >= 2 else (key, "", "")
        if kind == "state":
            state.setdefault(name, {})[leaf] = value
    return {"state": state, "param_groups": param_groups}


def write_checkpoint(root: str | os.PathLike, step: int, model_state: dict, optim_state: dict,
                     core, trainer_state: dict, keep: int = 2, tokenizer=None) -> Path:
    """Write checkpoint `step` under `root` and point `latest` at it; keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    if not (final / STATE_NAME).is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        default_permissions(tmp, 0o777)  # the checkpoint is a normal folder
        try:
            save_weights_dir(tmp, core.config, export_state(core, state=model_state))
            tensors, groups = _flatten_optimizer(optim_state)
            tensors["rng/torch"] = torch.get_rng_state()
            atomic_write(tmp / OPTIMIZER_NAME, lambda p: save_file(tensors, p))
            if tokenizer is not None:
                tokenizer.save(tmp)
            atomic_write_text(tmp / STATE_NAME, json.dumps(
                {**trainer_state, "step": step, "param_groups": groups}, indent=1) + "\n")
            if final.exists():  # a partial leftover of an earlier crash at this same step
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    atomic_write_text(root / LATEST, final.name + "\n")
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _require(source: Path, found: dict, kinds: dict[str, type]) -> None:
    """CheckpointError naming every key of `kinds` that `found` lacks or holds with another type."""
    bad = [f"{k!r} is missing" if k not in found else f"{k!r} is not a {t.__name__}"
           for k, t in kinds.items() if type(found.get(k)) is bool or not isinstance(found.get(k), t)]
    if bad:
        raise CheckpointError(f"{source}: corrupt checkpoint ({'; '.join(bad)})")


def _check_trainer_state(path: Path, state: dict, optimizer) -> None:
    """A trainer_state.json must agree with its folder's name and with this optimizer: a step
    of -5, a param group without betas or with garbage in them fails here, not in the update."""
    source = path / STATE_NAME
    _require(source, state, {"step": int, "param_groups": list})
    if path.name != f"{PREFIX}{state['step']:08d}" or state["step"] < 1:
        raise CheckpointError(f"{source}: corrupt checkpoint (step {state['step']} in a folder "
                              f"named {path.name})")
    groups, ours = state["param_groups"], optimizer.param_groups
    if len(groups) != len(ours) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{source}: corrupt checkpoint ({len(groups)} param groups, this "
                              f"optimizer has {len(ours)})")
    for i, (group, mine) in enumerate(zip(groups, ours)):
        betas = group.get("betas")
        checks = {"params": isinstance(group.get("params"), list) and len(group["params"]) == len(mine["params"]),
                  "betas": isinstance(betas, list) and len(betas) == 2
                           and all(_number(b) and 0 <= b < 1 for b in betas),
                  **{field: _number(group.get(field)) and group[field] >= low
                     for field, low in (("lr", 0.0), ("weight_decay", 0.0), ("eps", 1e-30))}}
        for field, ok in checks.items():
            if not ok:
                raise CheckpointError(f"{source}: corrupt checkpoint (param group {i}: {field} is "
                                      f"{group.get(field)!r})")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def latest_checkpoint(root: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint under `root`, or None."""
    root = Path(root)
    try:
        named = root / (root / LATEST).read_text(encoding="utf-8").strip()
        if (named / STATE_NAME).is_file():
            return named
    except (OSError, UnicodeDecodeError):
        pass
    complete = [p for p in sorted(root.glob(f"{PREFIX}*")) if (p / STATE_NAME).is_file()]
    return complete[-1] if complete else None


def load_checkpoint(path: str | os.PathLike, model, optimizer, core) -> dict:
    """Restore model, optimizer and RNG state from a checkpoint dir; returns trainer_state.json."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    try:
        trainer_state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {STATE_NAME} ({e})") from None
    if not isinstance(trainer_state, dict):
        raise CheckpointError(f"{path / STATE_NAME}: expected a JSON object")
    _check_trainer_state(path, trainer_state, optimizer)
    model_state = read_safetensors(path / WEIGHTS_NAME)
    for alias, source in type(core).tied_weights.items():
        if source in model_state and getattr(core.config, "tie_embeddings", False):
            model_state[alias] = model_state[source]
    tensors = read_safetensors(path / OPTIMIZER_NAME)
    _require(path / OPTIMIZER_NAME, tensors, {"rng/torch": torch.Tensor})
    rng, want = tensors["rng/torch"], torch.get_rng_state()
    if rng.dtype != want.dtype or rng.shape != want.shape:
        raise CheckpointError(f"{path / OPTIMIZER_NAME}: corrupt checkpoint (RNG state of "
                              f"{rng.dtype} {tuple(rng.shape)}, expected {want.dtype} {tuple(want.shape)})")
    optim_state = _unflatten_optimizer(tensors, trainer_state["param_groups"])
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} does not match this model/optimizer ({e})") from None
    try:
        torch.set_rng_state(rng)
    except RuntimeError as e:
        raise CheckpointError(f"{path / OPTIMIZER_NAME}: corrupt RNG state ({e})") from None
    return trainer_state
