"""Checkpoint directories in three formats, detected in one place and loaded through one path.

- "mambakit": config.json (our field names, `model_type`) + model.safetensors — every model family.
- "transformers": a `MambaForCausalLM` / `Mamba2ForCausalLM.save_pretrained` directory (`hidden_size`,
  ...; see hf_mamba, hf_mamba2).
- "mamba_ssm": `MambaLMHeadModel` config.json (`d_model`, `ssm_cfg`) + pytorch_model.bin, Mamba-1 or
  Mamba-2 by ssm_cfg.layer (see mamba_ssm).

No pickle anywhere: safetensors, JSON, and `torch.load(weights_only=True)` for `.bin`. Tied
weights are stored once in our format (safetensors refuses shared storage) and re-tied on load.
Files are written atomically, weights first and config last: a directory with a config is complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from mambakit.io.atomic import atomic_write, atomic_write_text
from mambakit.io.files import (
    CONFIG_NAME, TOKENIZER_FILES, WEIGHTS_NAME, CheckpointError, read_config, read_safetensors, read_weights,
    save_safetensors,
)

FORMATS = ("mambakit", "transformers", "mamba_ssm")

__all__ = ["FORMATS", "CONFIG_NAME", "WEIGHTS_NAME", "CheckpointError", "detect_format",
           "detect_architecture", "load_model",
           "save_model", "save_weights_dir", "convert", "load_state_into", "tied_aliases", "read_config",
           "read_safetensors"]


def detect_format(config: dict) -> str:
    """Which format wrote this config.json: the field names tell the three apart."""
    if "hidden_size" in config or "architectures" in config:
        return "transformers"
    if "ssm_cfg" in config or ("model_type" not in config and "d_model" in config):
        return "mamba_ssm"
    return "mambakit"


# transformers model_type -> our registry name, for the architectures we load and save
TRANSFORMERS_TYPES = {"mamba": "mamba", "mamba2": "mamba2"}
# mamba_ssm ssm_cfg.layer -> our registry name
MAMBA_SSM_LAYERS = {"Mamba1": "mamba", "Mamba2": "mamba2"}
# Relatives in the SSM lineage that transformers knows and mambakit does not load (yet), named
# so that the error says what the directory holds instead of listing keys that do not fit.
UNSUPPORTED_ARCHITECTURES = {
    "falcon_mamba": "FalconMamba", "jamba": "Jamba", "zamba": "Zamba", "zamba2": "Zamba2",
    "bamba": "Bamba", "falcon_h1": "Falcon-H1", "nemotron_h": "Nemotron-H",
    "granitemoehybrid": "Granite 4.0 hybrid", "lfm2": "LFM2", "plamo2": "PLaMo 2",
}


def detect_architecture(config: dict, source: str | os.PathLike = CONFIG_NAME) -> tuple[str, str]:
    """(format, registry name) of a config.json: Mamba-1 ("mamba"), Mamba-2 ("mamba2"), or
    another family of ours; anything else raises a CheckpointError naming what it is."""
    fmt = detect_format(config)
    if fmt == "mamba_ssm":
        from mambakit.io.mamba_ssm import mixer_layer

        return fmt, MAMBA_SSM_LAYERS[mixer_layer(config, source)]
    model_type = config.get("model_type", "mamba" if fmt == "mambakit" else None)
    if fmt == "transformers":
        if model_type in TRANSFORMERS_TYPES:
            return fmt, TRANSFORMERS_TYPES[model_type]
        known = UNSUPPORTED_ARCHITECTURES.get(model_type)
        what = f"a {known} checkpoint (transformers model_type {model_type!r})" if known else \
            f"transformers model_type {model_type!r}"
        raise CheckpointError(f"{source}: {what} is not supported; mambakit loads transformers "
                              f"'mamba' (Mamba-1) and 'mamba2' (Mamba-2) checkpoints")
    from mambakit.models import model_class

    try:
        model_class(model_type)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return fmt, model_type


def _format_module(fmt: str, name: str):
    """The module that reads and writes `fmt` for our model `name` (a registry name)."""
    from mambakit.io import hf_mamba, hf_mamba2, mamba_ssm

    modules = {("transformers", "mamba"): hf_mamba, ("transformers", "mamba2"): hf_mamba2,
               ("mamba_ssm", "mamba"): mamba_ssm, ("mamba_ssm", "mamba2"): mamba_ssm}
    if (fmt, name) not in modules:
        raise ValueError(f"only Mamba and Mamba-2 models export to {fmt}, not {name!r} models")
    return modules[fmt, name]


def save_model(model, directory: str | os.PathLike, format: str = "mambakit") -> None:
    """Write `model` to `directory` in `format` ("mambakit", "transformers" or "mamba_ssm")."""
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {list(FORMATS)}")
    quantization = getattr(model, "quantization", None)
    if format != "mambakit" and quantization not in (None, "fp32"):
        raise ValueError(f"a {quantization} model saves only in the mambakit format; "
                         f"load the original weights to export them as {format}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if format != "mambakit":
        _format_module(format, model.config.model_type).save(model, directory)
        return
    extra = {} if quantization in (None, "fp32") else {"quantization": quantization}
    save_weights_dir(directory, model.config, export_state(model), extra)


def save_weights_dir(directory: Path, config, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """A mambakit checkpoint directory: `state` as model.safetensors, `config` (+ `extra` fields,
    e.g. "quantization") as config.json."""
    metadata = {"format": "pt", "library": "mambakit"}
    write_model_dir(directory, {**config.to_dict(), **(extra or {})}, lambda d: atomic_write(
        d / WEIGHTS_NAME, lambda tmp: save_safetensors(state, tmp, metadata=metadata)))


def write_model_dir(directory: Path, config: dict, write_weights) -> None:
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


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint directory in any of FORMATS (detected from its config.json)."""
    from mambakit.models import model_class

    data = read_config(directory)
    quantization = data.pop("quantization", None)
    config_path = Path(directory) / CONFIG_NAME
    fmt, name = detect_architecture(data, config_path)
    cls = model_class(name)
    if fmt == "mambakit":
        try:
            config = cls.config_class.from_dict(data)
        except ValueError as e:
            raise CheckpointError(f"{config_path}: {e}") from None
        source = str(Path(directory) / WEIGHTS_NAME)
        state = read_safetensors(source)
    else:
        module = _format_module(fmt, name)
        config = module.config_from_dict(data, config_path)
        raw, source = read_weights(directory)
        state = module.state_to_ours(raw)
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty makes every parameter a new object
    if quantization is not None:
        from mambakit.models.quantize import quantize

        try:
            quantize(model, quantization)  # the packed layout; the weights come next
        except ValueError as e:
            raise CheckpointError(f"{config_path}: {e}") from None
    load_state_into(model, state, source)
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, format: str) -> str:
    """Re-save the checkpoint at `src` in `format` under `dst`, tokenizer files included.
    Returns the format `src` was detected as. `dst` must not hold a checkpoint already: weights
    left there in another format would be found before the new ones when it is loaded."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError("convert: source and destination are the same directory")
    held = sorted(p.name for p in Path(dst).glob("*") if p.name == CONFIG_NAME
                  or p.name.endswith((".safetensors", ".bin", ".index.json")))
    if held:
        raise CheckpointError(f"convert: {dst} already holds a checkpoint ({', '.join(held)}); "
                              f"write to a new or empty folder")
    source_format = detect_format(read_config(src))
    model = load_model(src)
    save_model(model, dst, format=format)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            atomic_write(Path(dst) / name, lambda tmp, name=name: shutil.copyfile(Path(src) / name, tmp))
    return source_format
