"""transformers `MambaForCausalLM` directories <-> mambakit.

Facts from transformers' models/mamba (configuration_mamba.py, modeling_mamba.py):
- config.json names: hidden_size, num_hidden_layers, state_size, conv_kernel, expand,
  time_step_rank ("auto" = ceil(hidden_size / 16)), time_step_{min,max,floor,scale},
  use_conv_bias, use_bias, layer_norm_epsilon (every RMSNorm, default 1e-5), residual_in_fp32,
  tie_word_embeddings, vocab_size, hidden_act ("silu").
- The embedding has exactly `vocab_size` rows: transformers does not pad the vocabulary, so
  we export our padded size as its vocab_size, and the true one as "mambakit_vocab_size" (an
  extra key transformers keeps and ignores) so the padding ids stay out of range after a round
  trip. Without that key every row is a token (pad_vocab_size_multiple=1).
- Norms are always RMSNorm; the only key that differs from ours is backbone.embeddings
  (ours, like mamba_ssm: backbone.embedding). A tied lm_head is not stored.
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from mambakit.config import MambaConfig
from mambakit.io.atomic import atomic_write
from mambakit.io.files import WEIGHTS_NAME, CheckpointError
from mambakit.io.weights import export_state, write_model_dir

# (theirs, ours) key prefixes
KEY_PREFIXES = (("backbone.embeddings.", "backbone.embedding."),)

# transformers MambaConfig defaults, used for fields a config.json leaves out
DEFAULTS = dict(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=32,
                layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                hidden_act="silu", residual_in_fp32=True, time_step_rank="auto", time_step_scale=1.0,
                time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4, tie_word_embeddings=True)

# the vocabulary without padding rows, which transformers' vocab_size counts
TRUE_VOCAB_KEY = "mambakit_vocab_size"

# their field -> our MambaConfig field (vocab_size is read apart: see TRUE_VOCAB_KEY)
FIELDS = dict(hidden_size="d_model", num_hidden_layers="n_layer", state_size="d_state", conv_kernel="d_conv", expand="expand", time_step_rank="dt_rank",
              time_step_min="dt_min", time_step_max="dt_max", time_step_floor="dt_init_floor",
              time_step_scale="dt_scale", use_conv_bias="conv_bias", use_bias="bias",
              layer_norm_epsilon="norm_epsilon", residual_in_fp32="residual_in_fp32",
              tie_word_embeddings="tie_embeddings")


def config_from_dict(data: dict, source: str | Path = "config.json") -> MambaConfig:
    """A transformers Mamba config.json -> MambaConfig. Fields that do not change the forward
    pass (initializer_range, use_cache, token ids, ...) are ignored."""
    if data.get("model_type") != "mamba":
        raise CheckpointError(f"{source}: model_type {data.get('model_type')!r} is not supported; "
                              f"only transformers 'mamba' (Mamba-1) checkpoints load")
    data = {**DEFAULTS, **data}
    if data["hidden_act"] != "silu":
        raise CheckpointError(f"{source}: hidden_act {data['hidden_act']!r} is not supported (only 'silu')")
    if "intermediate_size" in data and data["intermediate_size"] != data["expand"] * data["hidden_size"]:
        raise CheckpointError(f"{source}: intermediate_size {data['intermediate_size']} != expand * "
                              f"hidden_size ({data['expand']} * {data['hidden_size']})")
    try:
        return MambaConfig(**{ours: data[theirs] for theirs, ours in FIELDS.items()},
                           **vocab_fields(data, source), rms_norm=True)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def vocab_fields(data: dict, source: str | Path) -> dict:
    """vocab_size and pad_vocab_size_multiple from a transformers config (see TRUE_VOCAB_KEY)."""
    rows = data["vocab_size"]
    vocab_size = data.get(TRUE_VOCAB_KEY, rows)
    if not (type(vocab_size) is int and type(rows) is int and 0 < vocab_size <= rows):
        raise CheckpointError(f"{source}: {TRUE_VOCAB_KEY} {vocab_size!r} must be an int in "
                              f"1..vocab_size ({rows!r})")
    # padding to a multiple of `rows` rounds any 0 < vocab_size <= rows up to exactly `rows`
    return dict(vocab_size=vocab_size, pad_vocab_size_multiple=1 if vocab_size == rows else rows)


def config_to_dict(cfg: MambaConfig) -> dict:
    if cfg.attn_layer_idx:
        raise ValueError("transformers MambaForCausalLM has no attention layers; this hybrid "
                         "(attn_layer_idx) cannot be exported to it")
    if cfg.d_intermediate:
        raise ValueError("transformers MambaForCausalLM has no MLP per block; this model "
                         "(d_intermediate) cannot be exported to it")
    if not cfg.rms_norm:
        raise ValueError("transformers MambaForCausalLM always uses RMSNorm; this model uses "
                         "LayerNorm (rms_norm=False) and cannot be exported to it")
    ours = {**cfg.to_dict(), "dt_rank": cfg.resolved_dt_rank}
    return {"architectures": ["MambaForCausalLM"], "model_type": "mamba",
            **{theirs: ours[field] for theirs, field in FIELDS.items()},
            "vocab_size": cfg.padded_vocab_size, TRUE_VOCAB_KEY: cfg.vocab_size, "intermediate_size": cfg.d_inner, "hidden_act": "silu",
            "time_step_init_scheme": "random"}


def _rename(key: str, src: int) -> str:
    for pair in KEY_PREFIXES:
        if key.startswith(pair[src]):
            return pair[1 - src] + key[len(pair[src]):]
    return key


def state_to_ours(state: dict) -> dict:
    return {_rename(k, 0): v for k, v in state.items()}


def state_from_ours(state: dict) -> dict:
    return {_rename(k, 1): v for k, v in state.items()}


def save(model, directory: Path) -> None:
    """config.json + model.safetensors that `MambaForCausalLM.from_pretrained` reads."""
    write_transformers_dir(model, directory, config_to_dict(model.config))


def write_transformers_dir(model, directory: Path, config: dict) -> None:
    """`config` as config.json, the model's weights under transformers' key names as safetensors."""
    state = state_from_ours(export_state(model))
    write_model_dir(directory, config, lambda d: atomic_write(
        d / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})))
