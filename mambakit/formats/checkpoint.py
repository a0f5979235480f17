"""Checkpoint directories in three formats, detected in one place and read through one path.

- "mambakit": config.json (our field names, `model_type`) + model.safetensors — every model family.
- "transformers": a `MambaForCausalLM` / `Mamba2ForCausalLM.save_pretrained` directory (`hidden_size`,
  ...; see hf_mamba, hf_mamba2).
- "mamba_ssm": `MambaLMHeadModel` config.json (`d_model`, `ssm_cfg`) + pytorch_model.bin, Mamba-1 or
  Mamba-2 by ssm_cfg.layer (see mamba_ssm).

This module knows configs and state dicts, not model classes: `LanguageModel.from_pretrained`
reads through it, and `mambakit.models.auto` picks the registered family for a directory.
No pickle anywhere: safetensors, JSON, and `torch.load(weights_only=True)` for `.bin`. Tied
weights are stored once in our format (safetensors refuses shared storage) and re-tied on load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from mambakit.config import ConfigBase
from mambakit.formats import hf_mamba, hf_mamba2, mamba_ssm
from mambakit.io.files import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_config, read_safetensors, read_weights
from mambakit.io.weights import export_state, save_weights_dir

FORMATS = ("mambakit", "transformers", "mamba_ssm")

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
# (format, registry name) -> the module that reads and writes it
_FOREIGN = {("transformers", "mamba"): hf_mamba, ("transformers", "mamba2"): hf_mamba2,
            ("mamba_ssm", "mamba"): mamba_ssm, ("mamba_ssm", "mamba2"): mamba_ssm}


def detect_format(config: dict) -> str:
    """Which format wrote this config.json: the field names tell the three apart."""
    if "hidden_size" in config or "architectures" in config:
        return "transformers"
    if "ssm_cfg" in config or ("model_type" not in config and "d_model" in config):
        return "mamba_ssm"
    return "mambakit"


def detect_architecture(config: dict, source: str | os.PathLike = CONFIG_NAME) -> tuple[str, str]:
    """(format, registry name) of a config.json: Mamba-1 ("mamba"), Mamba-2 ("mamba2"), or
    another family of ours (whether it is registered is the registry's to say); a foreign
    architecture we do not load raises a CheckpointError naming what it is."""
    fmt = detect_format(config)
    if fmt == "mamba_ssm":
        return fmt, MAMBA_SSM_LAYERS[mamba_ssm.mixer_layer(config, source)]
    model_type = config.get("model_type", "mamba" if fmt == "mambakit" else None)
    if fmt == "transformers":
        if model_type not in TRANSFORMERS_TYPES:
            known = UNSUPPORTED_ARCHITECTURES.get(model_type)
            what = f"a {known} checkpoint (transformers model_type {model_type!r})" if known else \
                f"transformers model_type {model_type!r}"
            raise CheckpointError(f"{source}: {what} is not supported; mambakit loads transformers "
                                  f"'mamba' (Mamba-1) and 'mamba2' (Mamba-2) checkpoints")
        return fmt, TRANSFORMERS_TYPES[model_type]
    return fmt, model_type


def _format_module(fmt: str, name: str):
    """The module that reads and writes `fmt` for our model `name` (a registry name)."""
    if (fmt, name) not in _FOREIGN:
        raise ValueError(f"only Mamba and Mamba-2 models export to {fmt}, not {name!r} models")
    return _FOREIGN[fmt, name]


class Checkpoint(NamedTuple):
    config: ConfigBase
    state: dict[str, torch.Tensor]        # in our key names
    source: str                           # the weights file, for error messages
    quantization: Optional[str] = None    # weight format of a quantized model ("bf16", "int8")


def read_checkpoint(directory: str | os.PathLike, config_class: type[ConfigBase]) -> Checkpoint:
    """The checkpoint at `directory`, which must hold a `config_class` model in any of FORMATS."""
    data = read_config(directory)
    quantization = data.pop("quantization", None)
    source = Path(directory) / CONFIG_NAME
    fmt, name = detect_architecture(data, source)
    if name != config_class.model_type:
        raise CheckpointError(f"{directory} holds a {name!r} checkpoint, not a {config_class.model_type!r} one")
    if fmt == "mambakit":
        try:
            config = config_class.from_dict(data)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
        weights = str(Path(directory) / WEIGHTS_NAME)
        return Checkpoint(config, read_safetensors(weights), weights, quantization)
    module = _format_module(fmt, name)
    config = module.config_from_dict(data, source)
    raw, weights = read_weights(directory)
    return Checkpoint(config, module.state_to_ours(raw), weights, quantization)


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
