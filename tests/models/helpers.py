"""What several model test files do the same way."""
import torch


def prefill_then_steps(model, ids: torch.Tensor, split: int, max_seqlen=None):
    """(logits (b, l, v), cache): ids[:, :split] in one prefill call, the rest one decode step at a
    time; a model whose modes agree gives model(ids)."""
    cache = model.allocate_cache(ids.shape[0], max_seqlen=max_seqlen)
    pre = model(ids[:, :split], cache=cache)
    rest = [model.step(ids[:, t], cache) for t in range(split, ids.shape[1])]
    return torch.cat([pre, torch.stack(rest, 1)], 1), cache
