"""mamba_ssm `MambaLMHeadModel` checkpoints (config.json + pytorch_model.bin) <-> mambakit.

Facts from state-spaces/mamba (models/config_mamba.py, models/mixer_seq_simple.py):
- config.json: d_model, n_layer, vocab_size, ssm_cfg (the mixer's kwargs; "layer" picks the
  mixer: "Mamba1" (the default: d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init,
  dt_scale, dt_init_floor, conv_bias, bias, ...) or "Mamba2" (modules/mamba2.py: d_state,
  headdim, ngroups, A_init_range, D_has_hdim, rmsnorm, norm_before_gate, dt_limit, chunk_size, ...)),
  rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple, tie_embeddings, and in
  newer versions d_intermediate (an MLP per block) and attn_layer_idx / attn_cfg (hybrid stacks:
  modules/mha.py's MHA at those indices, keys mixer.in_proj.* and mixer.out_proj.*).
- The vocabulary is padded up to pad_vocab_size_multiple, as ours is; norms use eps 1e-5
  (create_block's norm_epsilon default). MambaConfig has no norm_epsilon field, so a config.json
  carrying one fails `MambaConfig(**config)`: we read it when present but never write it.
- Weights: torch.save(model.state_dict()) — backbone.embedding.weight,
  backbone.layers.{i}.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*, .A_log, .D (Mamba2:
  in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj),
  backbone.layers.{i}.norm.weight, with d_intermediate > 0 also backbone.layers.{i}.norm2.weight
  and .mlp.fc1.weight / .mlp.fc2.weight (modules/mlp.py's GatedMLP, hidden width rounded up to a
  multiple of 128), backbone.norm_f.weight, lm_head.weight (stored even when tied).
  mambakit's module names were chosen to match, so keys map one to one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mambakit.config import Mamba2Config, MambaConfig
from mambakit.io.atomic import atomic_write
from mambakit.io.files import BIN_NAME, CheckpointError
from mambakit.io.weights import export_state, write_model_dir

TOP_FIELDS = ("d_model", "n_layer", "vocab_size", "rms_norm", "residual_in_fp32",
              "pad_vocab_size_multiple", "tie_embeddings", "norm_epsilon", "attn_layer_idx", "attn_cfg",
              "d_intermediate")
# ssm_cfg fields per mixer (ssm_cfg.layer): the Mamba / Mamba2 modules' constructor arguments.
SSM_FIELDS = {
    "Mamba1": ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor",
               "dt_scale", "conv_bias", "bias"),
    "Mamba2": ("d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
               "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor",
               "dt_limit", "bias", "conv_bias", "chunk_size"),
}
CONFIGS = {"Mamba1": MambaConfig, "Mamba2": Mamba2Config}
# Accepted and ignored: they select kernels or initialisation, not the forward pass.
IGNORED_TOP = ("fused_add_norm", "initializer_cfg")
IGNORED_SSM = ("dt_init", "use_fast_path", "use_mem_eff_path", "conv_init", "layer")
NORM_EPSILON = 1e-5  # create_block's fixed norm_epsilon; MambaConfig(**config.json) refuses the key
# mamba_ssm's MambaConfig defaults for the fields above where they differ from ours
DEFAULTS = dict(d_model=2560, n_layer=64, vocab_size=50277, pad_vocab_size_multiple=8,
                rms_norm=True, residual_in_fp32=True, tie_embeddings=True)


def mixer_layer(data: dict, source: str | Path = "config.json") -> str:
    """"Mamba1" or "Mamba2": which mixer a mamba_ssm config.json builds (ssm_cfg.layer)."""
    layer = (data.get("ssm_cfg") or {}).get("layer", "Mamba1")
    if layer not in CONFIGS:
        raise CheckpointError(f"{source}: ssm_cfg.layer {layer!r} is not supported "
                              f"(mambakit loads {' and '.join(CONFIGS)})")
    return layer


def config_from_dict(data: dict, source: str | Path = "config.json") -> MambaConfig | Mamba2Config:
    layer = mixer_layer(data, source)
    ssm_cfg = data.get("ssm_cfg") or {}
    unknown = sorted({k for k in data if k not in TOP_FIELDS + IGNORED_TOP + ("ssm_cfg",)}
                     | {f"ssm_cfg.{k}" for k in ssm_cfg if k not in SSM_FIELDS[layer] + IGNORED_SSM})
    if unknown:
        raise CheckpointError(f"{source}: unknown mamba_ssm config field(s) {unknown}")
    fields = {**DEFAULTS, **{k: data[k] for k in TOP_FIELDS if k in data},
              **{k: ssm_cfg[k] for k in SSM_FIELDS[layer] if k in ssm_cfg}}
    if not fields.get("attn_layer_idx"):
        fields.pop("attn_cfg", None)   # mamba_ssm configs carry attn_cfg {} (or leftovers) unused
    try:
        return CONFIGS[layer](**fields)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_dict(cfg: MambaConfig | Mamba2Config) -> dict:
    layer = next(name for name, cls in CONFIGS.items() if isinstance(cfg, cls))
    ours = cfg.to_dict()
    ssm_cfg = {"layer": layer, **{k: ours[k] for k in SSM_FIELDS[layer]}}
    if "dt_limit" in ssm_cfg:
        ssm_cfg["dt_limit"] = list(ssm_cfg["dt_limit"])
        ssm_cfg["A_init_range"] = list(ssm_cfg["A_init_range"])
    config = {k: ours[k] for k in TOP_FIELDS if k != "norm_epsilon"}
    config.update(ssm_cfg=ssm_cfg, fused_add_norm=True)
    return config


def state_to_ours(state: dict) -> dict:
    return dict(state)


def save(model, directory: Path) -> None:
    """config.json + pytorch_model.bin (a plain dict of tensors) that MambaLMHeadModel loads."""
    if not isinstance(model.config, tuple(CONFIGS.values())):
        raise ValueError(f"only Mamba and Mamba-2 models export to mamba_ssm, not {type(model).__name__}")
    if model.config.norm_epsilon != NORM_EPSILON:
        raise ValueError(f"mamba_ssm's config has no norm_epsilon field (its norms always use "
                         f"{NORM_EPSILON}); this model uses {model.config.norm_epsilon} and cannot be "
                         f"exported to it")
    state = export_state(model, keep_tied=True)  # mamba_ssm's state_dict keeps lm_head.weight
    write_model_dir(directory, config_to_dict(model.config),
                     lambda d: atomic_write(d / BIN_NAME, lambda tmp: torch.save(state, tmp)))
