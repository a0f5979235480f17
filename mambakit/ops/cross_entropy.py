"""Cross-entropy of a linear LM head, over the vocabulary in row chunks.

    loss = mean_i [ logsumexp_v (h_i · W_v) − h_i · W_{t_i} ]   over rows i with t_i != ignore_index

`F.cross_entropy(h @ W.T, t)` materialises the (N, V) fp32 logits, keeps them (and their softmax)
for the backward pass and then builds their (N, V) gradient: at N = 512 tokens and V = 50280 that is
~100 MB per copy, and several copies are alive at the peak of a training step. Here each chunk of
rows computes its logits, loss and softmax, and — because the loss is a mean, so the gradient
arriving in the backward pass is one scalar — already turns them into its share of dL/dh and dL/dW;
the chunk's logits are then dropped. The backward pass only scales the two saved gradients. The
FLOPs are those of the unfused head (one (N, d)x(d, V) product forward, two backward).
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100  # torch's cross_entropy default


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk so one chunk's fp32 logits take ~32 MB (GEMM-sized, cache-friendly)."""
    return max(1, (1 << 23) // max(vocab, 1))


def linear_cross_entropy_ref(h: Tensor, weight: Tensor, targets: Tensor,
                             ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The spec: h (N, d), weight (V, d), targets (N,) -> mean NLL (scalar, fp32)."""
    logits = (h @ weight.T).float()                                      # (N, V)
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk_rows: int) -> Tensor:
        keep_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # fp32 logits (fp64 for fp64 inputs) whatever the autocast or parameter dtype
        dtype = torch.promote_types(torch.promote_types(h.dtype, weight.dtype), torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            h32, w32 = h.to(dtype), weight.to(dtype)                      # (N, d), (V, d)
            valid = targets != ignore_index                               # (N,)
            count = valid.sum()
            # Mean over the valid rows; with none, the loss is nan (as torch's) and the grads 0.
            scale = valid.to(dtype) / count.clamp(min=1)                    # (N,)
            total = h32.new_zeros(())
            grad_h = torch.empty_like(h32) if keep_grads else None
            grad_w = torch.zeros_like(w32) if keep_grads else None
            for start in range(0, h32.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                logits = h32[rows] @ w32.T                                # (c, V)
                lse = torch.logsumexp(logits, dim=1)                      # (c,)
                t = torch.where(valid[rows], targets[rows], 0)[:, None]  # (c, 1)
                nll = lse - logits.gather(1, t)[:, 0]                     # (c,)
                total += (nll * valid[rows]).sum()
                if keep_grads:
                    # d mean / d logits = scale_i (softmax_i − onehot(t_i)), built in place
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs.scatter_add_(1, t, probs.new_full(t.shape, -1.0))
                    probs.mul_(scale[rows, None])
                    torch.mm(probs, w32, out=grad_h[rows])                # (c, d)
                    grad_w.addmm_(probs.T, h32[rows])                     # (V, d)
            loss = total / count
        # Kept on ctx (not save_for_backward: they are neither inputs nor outputs) so that the
        # backward can scale them in place and hand them on: no second (V, d) buffer at the
        # start of the backward pass, where a training step's memory peaks.
        ctx.grads = (grad_h.to(h.dtype), grad_w.to(weight.dtype)) if keep_grads else None
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy's backward ran twice (retain_graph is not supported)")
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_loss == 1):  # d(mean)/d(loss) is 1 unless the loss was scaled
            for g in grads:
                g.mul_(grad_loss.to(g.dtype))
        return grads[0], grads[1], None, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX,
                         chunk_rows: int | None = None) -> Tensor:
    """Mean cross-entropy of logits h @ weight.T against targets, never holding (N, V) at once.

    h (N, d) float, weight (V, d) float (a tied LM head's is the embedding: its gradient from here
    adds to the embedding's), targets (N,) int64 in [0, V) or `ignore_index`. Returns a fp32
    (fp64 for fp64 inputs) scalar equal to `linear_cross_entropy_ref` (F.cross_entropy with reduction "mean").
    """
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"h must be (N, d) and weight (V, d); got {tuple(h.shape)} and {tuple(weight.shape)}")
    if targets.shape != h.shape[:1] or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 of shape ({h.shape[0]},); got {targets.dtype} "
                         f"{tuple(targets.shape)}")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= weight.shape[0]))
    if bool(bad.any()):
        raise ValueError(f"target {int(targets[bad][0])} is out of range for {weight.shape[0]} classes")
    chunk_rows = default_chunk_rows(weight.shape[0]) if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk_rows)
