"""Weight formats for inference: `quantize(model, "int8")` (or "bf16", "fp32") swaps every
nn.Linear for a PackedLinear in that format, without touching the model files (after gpt-fast).

What changes: the Linear layers, the LM head included (a tied head gets its own copy, so the
embedding table stays exact). What stays fp32: embeddings, the causal conv, the SSM parameters
(A_log, D, dt_proj: Δ = softplus(dt_proj(x)) is computed in fp32 as in mamba_ssm), norms, and the
recurrent state. Activations keep the model's dtype. Decoding reads the packed weights with the
weight-streaming GEMV of ops/step_cpu.py: bf16 halves and int8 quarters the bytes per token.
A quantized model saves and loads like any other (config.json records "quantization").
"""
from __future__ import annotations

from collections import Counter

from torch import nn

from mambakit.modules.linear import FORMATS, PackedLinear

KEEP_FP32 = ("dt_proj",)  # Δ's projection: part of the SSM arithmetic, small, kept exact


def quantize(model: nn.Module, fmt: str = "int8") -> nn.Module:
    """Swap `model`'s nn.Linear layers (except KEEP_FP32) for PackedLinear in `fmt`, in place;
    returns the model. fmt: "int8" (per-output-channel scales), "bf16", or "fp32" (same
    weights, only the decode kernel changes)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose from {list(FORMATS)}")
    if getattr(model, "quantization", None) not in (None, "fp32", fmt):
        raise ValueError(f"model is already quantized to {model.quantization}; load it again to change")
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and name.rpartition(".")[2] not in KEEP_FP32]
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name, module in targets:
        owner, _, leaf = name.rpartition(".")
        packed = PackedLinear.from_linear(module, fmt)
        if uses[id(module.weight)] > 1 and packed.weight is not module.weight:
            packed.weight._tied_copy = True      # a copy of a tied weight: num_parameters counts it once
        setattr(model.get_submodule(owner), leaf, packed)
    model.quantization = fmt
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (tied ones once): the model's size in memory."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
