"""The state API (snapshot / restore / fork / select / concat) for every registered family: each
row of a reshaped cache continues exactly as the model's own cache-free forward over that row's
whole sequence (the parallel path: the reference the step path is checked against)."""
import pytest
import torch

from mambakit.models import REGISTRY, build
from mambakit.state import concat, fork, restore, select, snapshot, state_nbytes

ATTN = dict(num_heads=4, num_heads_kv=2, rotary_emb_dim=4)
HYBRIDS = {"mamba+attn": ("mamba", dict(attn_layer_idx=[1], attn_cfg=ATTN)),   # SSM states and KV caches
           "mamba2+attn": ("mamba2", dict(attn_layer_idx=[0], attn_cfg=ATTN))}  # in one cache
FAMILIES = sorted(REGISTRY) + sorted(HYBRIDS)


def _model(name):
    family, fields = HYBRIDS.get(name, (name, {}))
    return build(family, "tiny", **fields).eval()


def _next_logits(model, seq):
    """Reference: logits after the whole sequence, by one forward with no cache."""
    with torch.no_grad():
        return model(torch.tensor([seq]))[0, -1]


def _prefill(model, seq):
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(torch.tensor([seq]), cache=cache)
    return cache


@pytest.mark.parametrize("name", FAMILIES)
def test_restore_rolls_back(name):
    model = _model(name)
    prompt = [5, 9, 3, 7, 1]
    cache = _prefill(model, prompt)
    snap = snapshot(cache)
    with torch.no_grad():
        for t in (4, 8, 15):                     # advance 3 tokens, then roll all three back
            model.step(torch.tensor([t]), cache)
        restore(cache, snap)
        got = model.step(torch.tensor([2]), cache)[0]
        restore(cache, snap)                     # the snapshot is reusable
        again = model.step(torch.tensor([6]), cache)[0]
    torch.testing.assert_close(got, _next_logits(model, prompt + [2]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, _next_logits(model, prompt + [6]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_fork_select_concat_keep_every_row_exact(name):
    model = _model(name)
    a, b = [5, 9, 3, 7, 1, 8, 2] * 3, [4, 6]      # different lengths: KV caches need padding slots
    forked = fork(_prefill(model, a), 3)
    batch = concat([forked, _prefill(model, b)])
    assert batch.batch_size == 4
    tokens = torch.tensor([10, 11, 12, 13])
    with torch.no_grad():
        logits = model.step(tokens, batch)
    seqs = [a + [10], a + [11], a + [12], b + [13]]
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _next_logits(model, seq), atol=1e-4, rtol=1e-4)
    kept = select(batch, [3, 1])                  # drop finished rows, reorder
    with torch.no_grad():
        logits = model.step(torch.tensor([20, 21]), kept)
    for row, seq in enumerate([seqs[3] + [20], seqs[1] + [21]]):
        torch.testing.assert_close(logits[row], _next_logits(model, seq), atol=1e-4, rtol=1e-4)


def test_mamba_state_is_layers_x_channels_x_state_plus_conv_fp32():
    model = build("mamba", "tiny")
    c = model.config
    want = c.n_layer * c.d_inner * (c.d_state + c.d_conv - 1) * 4
    assert state_nbytes(model.allocate_cache(1)) == want
    assert state_nbytes(fork(model.allocate_cache(1), 3)) == 3 * want


def test_bad_arguments_are_refused():
    model = build("mamba", "tiny")
    cache = model.allocate_cache(2)
    with pytest.raises(IndexError, match=r"rows \[2\] out of range for a cache of 2 rows"):
        select(cache, [2])
    with pytest.raises(ValueError, match="fork needs n >= 1"):
        fork(cache, 0)
    with pytest.raises(ValueError, match="one type"):
        concat([cache, build("gru", "tiny").allocate_cache(1)])
    with pytest.raises(TypeError, match="cannot restore"):
        restore(cache, build("gru", "tiny").allocate_cache(2))
