"""What several model test files do the same way."""
import math

import pytest
import torch


def prefill_then_steps(model, ids: torch.Tensor, split: int, max_seqlen=None):
    """(logits (b, l, v), cache): ids[:, :split] in one prefill call, the rest one decode step at a
    time; a model whose modes agree gives model(ids)."""
    cache = model.allocate_cache(ids.shape[0], max_seqlen=max_seqlen)
    pre = model(ids[:, :split], cache=cache)
    rest = [model.step(ids[:, t], cache) for t in range(split, ids.shape[1])]
    return torch.cat([pre, torch.stack(rest, 1)], 1), cache


def assert_learns_a_repeating_pattern(model, padded_vocab: int, steps: int = 30):
    """30 AdamW steps on a period-8 sequence: the loss starts near log(vocab) (uniform logits at
    init) and at least halves."""
    model.train()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 4])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(padded_vocab), rel=0.2)
    assert losses[-1] < 0.5 * losses[0]
