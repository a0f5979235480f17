"""transformers `Mamba2ForCausalLM` directories <-> mambakit's Mamba2LM.

Facts from transformers' models/mamba2 (configuration_mamba2.py, modeling_mamba2.py):
- config.json names: hidden_size, num_hidden_layers, num_heads, head_dim, state_size, n_groups,
  conv_kernel, expand, chunk_size, time_step_{min,max,floor}, time_step_limit (a pair),
  use_conv_bias, use_bias, layer_norm_epsilon, residual_in_fp32, tie_word_embeddings (default
  False), vocab_size, hidden_act ("silu"); floats JSON cannot hold are written as
  {"__float__": "Infinity"} (transformers 5; older versions wrote a bare Infinity); time_step_rank and rescale_prenorm_residual do not
  change the forward pass. num_heads · head_dim must equal expand · hidden_size.
- The mixer is mamba_ssm's Mamba2 with rmsnorm=True, norm_before_gate=False and D per head:
  gated RMSNorm over groups of d_inner / n_groups channels with eps layer_norm_epsilon; the
  in_proj order is [z, x, B, C, Δ]. Parameter names equal ours and mamba_ssm's.
- Like transformers' Mamba-1: norms are RMSNorm, the vocabulary is not padded (handled as in
  hf_mamba with TRUE_VOCAB_KEY), and the only key that differs is backbone.embeddings.
"""
from __future__ import annotations

import math
from pathlib import Path

from mambakit.config import Mamba2Config
from mambakit.formats import hf_mamba
from mambakit.formats.hf_mamba import TRUE_VOCAB_KEY, vocab_fields, write_transformers_dir
from mambakit.io.files import CheckpointError

# Weight names differ from ours exactly as for Mamba-1 (backbone.embeddings).
state_to_ours = hf_mamba.state_to_ours

# transformers Mamba2Config defaults, used for fields a config.json leaves out
DEFAULTS = dict(num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128,
                num_hidden_layers=64, layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, n_groups=8,
                use_bias=False, use_conv_bias=True, hidden_act="silu", residual_in_fp32=True,
                time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4,
                time_step_limit=(0.0, float("inf")), chunk_size=256, tie_word_embeddings=False)

# their field -> our Mamba2Config field (vocab_size is read apart: see hf_mamba.vocab_fields)
FIELDS = dict(hidden_size="d_model", num_hidden_layers="n_layer", state_size="d_state",
              head_dim="headdim", n_groups="ngroups", conv_kernel="d_conv", expand="expand",
              chunk_size="chunk_size", time_step_min="dt_min", time_step_max="dt_max",
              time_step_floor="dt_init_floor", time_step_limit="dt_limit", use_conv_bias="conv_bias",
              use_bias="bias", layer_norm_epsilon="norm_epsilon", residual_in_fp32="residual_in_fp32",
              tie_word_embeddings="tie_embeddings")


FLOAT_TAG = "__float__"


def _decode_float(value):
    """transformers' {"__float__": "Infinity"} -> inf; anything else unchanged."""
    if isinstance(value, dict) and set(value) == {FLOAT_TAG} and value[FLOAT_TAG] in ("Infinity", "-Infinity", "NaN"):
        return float(value[FLOAT_TAG].lower().replace("infinity", "inf"))
    return value


def _encode_float(value: float):
    return {FLOAT_TAG: "Infinity" if value > 0 else "-Infinity"} if math.isinf(value) else value


def config_from_dict(data: dict, source: str | Path = "config.json") -> Mamba2Config:
    """A transformers Mamba2 config.json -> Mamba2Config."""
    data = {**DEFAULTS, **data}
    if isinstance(data["time_step_limit"], (list, tuple)):
        data["time_step_limit"] = [_decode_float(v) for v in data["time_step_limit"]]
    if data["hidden_act"] != "silu":
        raise CheckpointError(f"{source}: hidden_act {data['hidden_act']!r} is not supported (only 'silu')")
    try:
        config = Mamba2Config(**{ours: data[theirs] for theirs, ours in FIELDS.items()},
                              **vocab_fields(data, source), rms_norm=True)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    if data["num_heads"] != config.nheads:
        raise CheckpointError(f"{source}: num_heads {data['num_heads']} != expand * hidden_size / "
                              f"head_dim ({config.nheads})")
    return config


def config_to_dict(cfg: Mamba2Config) -> dict:
    unsupported = [name for name, ok in (("rms_norm=False", cfg.rms_norm), ("rmsnorm=False", cfg.rmsnorm),
                                         ("norm_before_gate=True", not cfg.norm_before_gate),
                                         ("D_has_hdim=True", not cfg.D_has_hdim),
                                         ("attention layers (attn_layer_idx)", not cfg.attn_layer_idx),
                                         ("an MLP per block (d_intermediate)", not cfg.d_intermediate)) if not ok]
    if unsupported:
        raise ValueError(f"transformers Mamba2ForCausalLM has no equivalent of {', '.join(unsupported)}; "
                         f"this model cannot be exported to it")
    ours = {**cfg.to_dict(), "dt_limit": [_encode_float(v) for v in cfg.dt_limit]}
    return {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
            **{theirs: ours[field] for theirs, field in FIELDS.items()},
            "vocab_size": cfg.padded_vocab_size, TRUE_VOCAB_KEY: cfg.vocab_size, "num_heads": cfg.nheads,
            "hidden_act": "silu"}


def save(model, directory: Path) -> None:
    """config.json + model.safetensors that `Mamba2ForCausalLM.from_pretrained` reads."""
    write_transformers_dir(model, directory, config_to_dict(model.config))
