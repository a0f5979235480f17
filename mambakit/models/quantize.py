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

import torch
from torch import nn

from mambakit.modules.linear import FORMATS, PackedLinear
from mambakit.ops.hugepages import together_on_huge_pages

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
    _weights_in_reading_order(model)
    model.quantization = fmt
    return model


@torch.no_grad()
def _weights_in_reading_order(model: nn.Module) -> None:
    """Move the weights a decode step streams (every PackedLinear's, and the KEEP_FP32 Linears')
    into one huge-page buffer, in module order — the order a step reads them (ops/hugepages.py,
    together_on_huge_pages). Values, dtypes, shapes, Parameters and ties are unchanged."""
    modules, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, PackedLinear) or (type(module) is nn.Linear and name.rpartition(".")[2] in KEEP_FP32):
            if id(module.weight) not in seen:     # a tied weight moves once
                seen.add(id(module.weight))
                modules.append(module)
    moved = together_on_huge_pages([m.weight for m in modules])
    for module, weight in zip(modules, moved):
        if weight is module.weight:
            continue
        if isinstance(module.weight, nn.Parameter):
            module.weight.data = weight           # the same Parameter: ties and optimizers still see it
        else:                                     # a buffer (int8): the same name, and its marks
            weight.__dict__.update(module.weight.__dict__)        # (e.g. _tied_copy)
            module.weight = weight


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (tied ones once): the model's size in memory."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
