"""Any checkpoint directory as the registered family it holds (`load_model`), and re-saving one in
another format (`convert`) — the registry-aware layer over `mambakit.formats.checkpoint`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from mambakit.formats.checkpoint import detect_architecture, detect_format
from mambakit.io.atomic import atomic_write
from mambakit.io.files import CONFIG_NAME, TOKENIZER_FILES, CheckpointError, read_config
from mambakit.models.base import LanguageModel
from mambakit.models.registry import model_class


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LanguageModel:
    """Load a checkpoint directory of any registered family, in any format (from its config.json)."""
    source = Path(directory) / CONFIG_NAME
    _, name = detect_architecture(read_config(directory), source)
    try:
        cls = model_class(name)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cls.from_pretrained(directory, device=device)


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
    load_model(src).save_pretrained(dst, format=format)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            atomic_write(Path(dst) / name, lambda tmp, name=name: shutil.copyfile(Path(src) / name, tmp))
    return source_format
