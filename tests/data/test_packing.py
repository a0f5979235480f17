"""Packed batches: deterministic in (seed, step), sliced per rank, with document boundaries."""
import numpy as np
import torch
import torch.nn.functional as F

from mambakit.data import TokenDataset, eval_batches, train_batch
from tests.conftest import tiny_mamba

EOS = 49


def dataset(n=500, eos_every=37):
    tokens = torch.randint(0, EOS, (n,))
    tokens[eos_every::eos_every] = EOS
    return TokenDataset(tokens.numpy(), EOS, torch.ones(50, dtype=torch.long))


def test_batch_is_a_function_of_seed_and_step_and_ranks_split_it():
    data = dataset()
    a, b = train_batch(data, 3, 7, 4, 16), train_batch(data, 3, 7, 4, 16)
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, train_batch(data, 3, 8, 4, 16).inputs)
    halves = [train_batch(data, 3, 7, 4, 16, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([h.inputs for h in halves]), a.inputs)
    assert torch.equal(a.targets[:, :-1], a.inputs[:, 1:])
    assert torch.equal(a.reset, a.inputs == EOS)


def test_eval_windows_cover_the_split_without_overlap():
    data = dataset(n=101)
    batches = list(eval_batches(data, seq_len=25, batch_size=3, n_batches=10))
    inputs = torch.cat([b.inputs for b in batches])
    assert inputs.shape == (4, 25)
    assert torch.equal(inputs.flatten(), torch.from_numpy(data.tokens[:100].astype(np.int64)))


def test_packed_documents_score_as_if_run_alone():
    """eos opens each document; with reset, a packed row equals the documents run one by one."""
    model = tiny_mamba()
    docs = [torch.randint(0, EOS, (n,)) for n in (7, 12, 5)]
    eos = torch.tensor([EOS])
    packed = torch.cat([torch.cat([eos, d]) for d in docs] + [eos])       # eos d1 eos d2 eos d3 eos
    inputs, targets = packed[None, :-1], packed[None, 1:]
    reset = inputs == EOS
    with torch.no_grad():
        nll = F.cross_entropy(model(inputs, reset=reset)[0], targets[0], reduction="none")
        unpacked = F.cross_entropy(model(inputs)[0], targets[0], reduction="none")
        start = 0
        for d in docs:
            alone_in = torch.cat([eos, d])[None]
            alone_tg = torch.cat([d, eos])
            alone = F.cross_entropy(model(alone_in)[0], alone_tg, reduction="none")
            torch.testing.assert_close(nll[start:start + len(d) + 1], alone, atol=1e-5, rtol=1e-5)
            start += len(d) + 1
    assert not torch.allclose(nll, unpacked, atol=1e-3)  # without reset, documents leak into each other
