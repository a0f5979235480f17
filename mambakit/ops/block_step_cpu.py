"""A whole Mamba block's decode step in one compiled call, and a whole Mamba LM's (csrc/mamba_block_step.cpp):

    MambaBlockStep: residual (b, d_model) fp32 -> residual + MambaMixer.step(RMSNorm(residual)),
    new conv state (b, d_inner, d_conv - 1) and new SSM state (b, d_inner, d_state), the old ones
    left untouched
    MambaLMStep: embeddings (b, d_model) -> logits (b, vocab) through every block, norm_f and the
    LM head, with every layer's new states

Why: a 130M decode step streams its weights in ~30 ms on 2 Zen 3 cores, and the eager block step
spends a few ms more on ~15 small torch ops and 5 kernel calls per layer around them; a call per
layer still cost ~30 µs of Python each and left one core idle during the small stages. Twins: the
unfused Block.step (the norm, the mixer's step ops, the residual add) and MixerLM.step over the
blocks; tests compare them.

`MambaBlockStep` checks a block's tensors once and keeps the argument struct, so each call only
checks the step's inputs, writes five pointers and runs the kernel; `MambaLMStep` keeps an array of
those structs and writes four state pointers per layer per call. Weights in any format of
`ops.linear` (fp32, bf16, int8 with per-row scales), through the same GEMV kernels.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from mambakit.ops.cpu_kernels import MambaBlockArgs, MambaLMArgs, library, ptr
from mambakit.ops.step_cpu import MAX_GEMV_ROWS

_F32 = torch.float32
_LM = "mamba lm step"
FORMATS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}   # as mamba_block_step.cpp's *_format

# (weight (n, k), scale (n,) or None, bias (n,) or None) of one projection
Projection = tuple[Tensor, Optional[Tensor], Optional[Tensor]]


class MambaBlockStep:
    """The fused step of one block, for fixed weights (the tensors are read at each call, so
    in-place updates of their values are seen; replacing a tensor needs a new MambaBlockStep).

    norm_weight (d_model,), in_proj (2 d_inner, d_model), conv_weight (d_inner, d_conv),
    conv_bias (d_inner,) or None, x_proj (dt_rank + 2 d_state, d_inner), dt_weight
    (d_inner, dt_rank), dt_bias (d_inner,), A (d_inner, d_state), D (d_inner,),
    out_proj (d_model, d_inner); everything fp32 but the projections' weights. `lib`: the kernel
    library (default this CPU's build; tests pass builds for other targets, cpu_kernels.build_for).
    """

    def __init__(self, norm_weight: Tensor, eps: float, in_proj: Projection, conv_weight: Tensor,
                 conv_bias: Optional[Tensor], x_proj: Projection, dt_weight: Tensor, dt_bias: Tensor,
                 A: Tensor, D: Tensor, out_proj: Projection, lib=None):
        d_inner, d_conv = conv_weight.shape
        d_model, d_state, dt_rank = norm_weight.shape[0], A.shape[1], dt_weight.shape[1]
        self.shape = dict(d_model=d_model, d_inner=d_inner, d_state=d_state, dt_rank=dt_rank, d_conv=d_conv)
        f32 = dict(norm_weight=(norm_weight, (d_model,)), conv_weight=(conv_weight, (d_inner, d_conv)),
                   conv_bias=(conv_bias, (d_inner,)), dt_weight=(dt_weight, (d_inner, dt_rank)),
                   dt_bias=(dt_bias, (d_inner,)), A=(A, (d_inner, d_state)), D=(D, (d_inner,)))
        for name, (t, shape) in f32.items():
            _check(name, t, shape, (_F32,))
        projections = dict(in_proj=(in_proj, (2 * d_inner, d_model)),
                           x_proj=(x_proj, (dt_rank + 2 * d_state, d_inner)), out_proj=(out_proj, (d_model, d_inner)))
        for name, ((w, scale, bias), shape) in projections.items():
            _check(f"{name}.weight", w, shape, tuple(FORMATS))
            _check(f"{name}.scale", scale, shape[:1], (_F32,))
            _check(f"{name}.bias", bias, shape[:1], (_F32,))
            if (w.dtype == torch.int8) != (scale is not None):
                raise ValueError(f"mamba block step: {name} needs a scale exactly when its weight is int8")
        self._keep = [t for t, _ in f32.values()] + [t for p, _ in projections.values() for t in p]
        a = self.args = MambaBlockArgs()
        for field, t in (("norm_w", norm_weight), ("conv_w", conv_weight), ("conv_b", conv_bias),
                         ("dt_w", dt_weight), ("dt_b", dt_bias), ("A", A), ("D", D)):
            setattr(a, field, ptr(t))
        for prefix, (w, scale, bias) in (("in", in_proj), ("xp", x_proj), ("out", out_proj)):
            setattr(a, f"{prefix}_w", ptr(w))
            setattr(a, f"{prefix}_scale", ptr(scale))
            setattr(a, f"{prefix}_bias", ptr(bias))
            setattr(a, f"{prefix}_format", FORMATS[w.dtype])
        for field, value in self.shape.items():
            setattr(a, field, value)
        a.eps = eps
        # looked up once: library() takes a lock, and this runs per layer per decoded token
        self.lib = lib or library()
        self._kernel, self._args_ref = self.lib.mk_mamba_block_step_f32, ctypes.byref(a)

    def __call__(self, residual: Tensor, conv_state: Tensor, ssm_state: Tensor,
                 threads: int) -> tuple[Tensor, Tensor, Tensor]:
        """residual (b, d_model), conv_state (b, d_inner, d_conv - 1), ssm_state (b, d_inner,
        d_state), all fp32 and contiguous, b <= MAX_GEMV_ROWS -> (new residual, new states)."""
        s = self.shape
        b = residual.shape[0] if residual.dim() == 2 else -1
        if not 1 <= b <= MAX_GEMV_ROWS:
            raise ValueError(f"mamba block step: residual must be (b, {s['d_model']}) with 1 <= b <= "
                             f"{MAX_GEMV_ROWS}, got {tuple(residual.shape)}")
        _check("residual", residual, (b, s["d_model"]), (_F32,))
        _check("conv_state", conv_state, (b, s["d_inner"], s["d_conv"] - 1), (_F32,))
        _check("ssm_state", ssm_state, (b, s["d_inner"], s["d_state"]), (_F32,))
        out, conv_out, ssm_out = torch.empty_like(residual), torch.empty_like(conv_state), torch.empty_like(ssm_state)
        a = self.args
        a.residual, a.residual_out, a.b, a.threads = residual.data_ptr(), out.data_ptr(), b, max(1, threads)
        a.conv_state, a.conv_state_out = conv_state.data_ptr(), conv_out.data_ptr()
        a.ssm_state, a.ssm_state_out = ssm_state.data_ptr(), ssm_out.data_ptr()
        self._kernel(self._args_ref)
        return out, conv_out, ssm_out


def _check(name: str, t: Optional[Tensor], shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...],
           who: str = "mamba block step") -> None:
    """What the kernel indexes by: `t` (None allowed) is a contiguous CPU tensor of `shape` and one of `dtypes`."""
    if t is None:
        return
    if t.shape != shape or t.dtype not in dtypes or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{who}: {name} must be a contiguous CPU {tuple(shape)} tensor of "
                         f"{[str(d) for d in dtypes]}, got {tuple(t.shape)} {t.dtype} on {t.device}")


class MambaLMStep:
    """A whole Mamba LM's decode step in one compiled call (mk_mamba_lm_step_f32): every block's
    fused step in turn, then the final RMSNorm and the LM head, in one parallel region.

    Why: per token, the per-layer calls cost ~30 µs of Python each (0.7 ms of a 130M step), and
    every call opened its own parallel region; here the Python work per token is one loop over the
    states and one call. Its twin is MixerLM.step over the blocks (each a MambaBlockStep or the
    unfused ops); tests compare logits and states.

    blocks: the layers' MambaBlockStep (same shapes), norm_weight (d_model,) fp32, head
    (weight (vocab, d_model) in an `ops.linear` format, scale, bias). Tensors are read at each
    call, as in MambaBlockStep. The kernel is the blocks' library's (`lib` of MambaBlockStep: tests
    pass builds for other targets).
    """

    def __init__(self, blocks: list[MambaBlockStep], norm_weight: Tensor, eps: float, head: Projection):
        if not blocks or any(b.shape != blocks[0].shape or b.lib is not blocks[0].lib for b in blocks):
            raise ValueError("mamba lm step: needs at least one block, all of the same shapes and library")
        s = self.shape = blocks[0].shape
        d_model = s["d_model"]
        _check("norm_f.weight", norm_weight, (d_model,), (_F32,), _LM)
        w, scale, bias = head
        vocab = w.shape[0] if w.dim() == 2 else -1
        _check("lm_head.weight", w, (vocab, d_model), tuple(FORMATS), _LM)
        _check("lm_head.scale", scale, (vocab,), (_F32,), _LM)
        _check("lm_head.bias", bias, (vocab,), (_F32,), _LM)
        if (w.dtype == torch.int8) != (scale is not None):
            raise ValueError("mamba lm step: lm_head needs a scale exactly when its weight is int8")
        self.vocab = vocab
        self._keep = [blocks, norm_weight, w, scale, bias]
        self._layers = (MambaBlockArgs * len(blocks))(*[b.args for b in blocks])   # copies of each struct
        a = self.args = MambaLMArgs()
        a.layers, a.n_layer = self._layers, len(blocks)
        a.norm_w, a.eps = ptr(norm_weight), eps
        a.head_w, a.head_scale, a.head_bias = ptr(w), ptr(scale), ptr(bias)
        a.head_format, a.vocab = FORMATS[w.dtype], vocab
        self._conv_shape = (s["d_inner"], s["d_conv"] - 1)
        self._ssm_shape = (s["d_inner"], s["d_state"])
        self._kernel, self._args_ref = blocks[0].lib.mk_mamba_lm_step_f32, ctypes.byref(a)

    def __call__(self, residual: Tensor, states: list[tuple[Tensor, Tensor]],
                 threads: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """residual (b, d_model) fp32 contiguous (the embeddings), states [(conv (b, d_inner,
        d_conv - 1), ssm (b, d_inner, d_state))] per layer, fp32 contiguous, b <= MAX_GEMV_ROWS
        -> (logits (b, vocab) fp32, new conv states, new ssm states); the old states are untouched."""
        s, n_layer = self.shape, len(self._layers)
        b = residual.shape[0] if residual.dim() == 2 else -1
        if not 1 <= b <= MAX_GEMV_ROWS:
            raise ValueError(f"mamba lm step: residual must be (b, {s['d_model']}) with 1 <= b <= "
                             f"{MAX_GEMV_ROWS}, got {tuple(residual.shape)}")
        _check("residual", residual, (b, s["d_model"]), (_F32,), _LM)
        if len(states) != n_layer:
            raise ValueError(f"mamba lm step: needs {n_layer} layer states, got {len(states)}")
        conv_shape, ssm_shape = (b, *self._conv_shape), (b, *self._ssm_shape)
        for i, (conv, ssm) in enumerate(states):   # what _check does, lean: this runs per decoded token
            if not (conv.shape == conv_shape and ssm.shape == ssm_shape and conv.dtype == _F32 and ssm.dtype == _F32
                    and conv.is_contiguous() and ssm.is_contiguous() and conv.device.type == "cpu"
                    and ssm.device.type == "cpu"):
                _check(f"layer {i}'s conv_state", conv, conv_shape, (_F32,), _LM)
                _check(f"layer {i}'s ssm_state", ssm, ssm_shape, (_F32,), _LM)
        # Every layer's new states in one buffer each (two allocations per token rather than 2 per layer, ~3 µs
        # apiece), handed out as per-layer views; safetensors saves non-overlapping views as separate tensors.
        conv_all = torch.empty((n_layer, *conv_shape), dtype=_F32)
        ssm_all = torch.empty((n_layer, *ssm_shape), dtype=_F32)
        conv_ptr, conv_bytes = conv_all.data_ptr(), conv_all[0].numel() * 4
        ssm_ptr, ssm_bytes = ssm_all.data_ptr(), ssm_all[0].numel() * 4
        for i, (layer, (conv, ssm)) in enumerate(zip(self._layers, states)):
            layer.conv_state, layer.ssm_state = conv.data_ptr(), ssm.data_ptr()
            layer.conv_state_out, layer.ssm_state_out = conv_ptr + i * conv_bytes, ssm_ptr + i * ssm_bytes
        logits = residual.new_empty((b, self.vocab))
        a = self.args
        a.residual, a.logits, a.b, a.threads = residual.data_ptr(), logits.data_ptr(), b, max(1, threads)
        self._kernel(self._args_ref)
        return logits, conv_all.unbind(0), ssm_all.unbind(0)
