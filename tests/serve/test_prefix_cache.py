"""The prompt-state cache: longest stored prefix wins, tokens are confirmed (not just hashes), LRU
eviction under a byte budget; and which boundaries a long prompt stores."""
import torch

from mambakit.serve.prefix_cache import PrefixCache, prefix_hashes
from mambakit.state import state_nbytes
from tests.serve.conftest import Served, tiny_byte_mamba


def _state(model, tokens):
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(torch.tensor([tokens]), cache=cache)
    return cache


def test_longest_prefix_lru_and_budget():
    model = tiny_byte_mamba()
    size = state_nbytes(model.allocate_cache(1))
    pc = PrefixCache(budget_bytes=2 * size)                        # room for two states
    a = [1, 2, 3, 4, 5, 6]
    h = prefix_hashes(a)
    pc.store(a[:2], h[1], _state(model, a[:2]))
    pc.store(a[:4], h[3], _state(model, a[:4]))
    assert len(pc) == 2 and pc.nbytes == 2 * size
    assert pc.lookup(a, h, max_length=5).tokens == tuple(a[:4])   # the longest that fits
    assert pc.lookup(a, h, max_length=3).tokens == tuple(a[:2])
    other = [9, 9, 9, 9, 9]
    assert pc.lookup(other, prefix_hashes(other), 4) is None
    assert (pc.hits, pc.misses) == (2, 1)
    pc.store(a[:5], h[4], _state(model, a[:5]))                    # evicts the least recently used: a[:4]
    assert len(pc) == 2 and pc.nbytes == 2 * size
    assert pc.lookup(a, h, max_length=4).tokens == tuple(a[:2])
    forged = [7, 7, 3, 4, 5, 6]                                    # right hash, wrong tokens: no hit
    assert pc.lookup(forged, h, max_length=5) is None
    stored = pc.lookup(a, h, max_length=5).state                  # a snapshot: later steps don't touch it
    with torch.no_grad():
        ref = model(torch.tensor([a[:6]]))[0, -1]
        torch.testing.assert_close(model(torch.tensor([a[5:6]]), cache=stored)[0, -1], ref,
                                   atol=1e-5, rtol=1e-5)


def test_a_long_prompt_stores_log_many_states():
    s = Served(tiny_byte_mamba(), api_key=None, prefill_chunk=16)
    try:
        r = s.client().completions.create(model="tiny", prompt="x" * 200, max_tokens=3, temperature=0,
                                          extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
        s.wait_for("live_states", 0)
        # boundaries 16, 32, 64, 128 (chunk × 2^k), 192 (the last), 199 (before the last token),
        # and 202 (prompt + the two tokens fed back after the completion)
        assert s.metric("state_cache_entries") == 7
        assert s.metric("state_cache_bytes") == 7 * s.engine.state_bytes
    finally:
        s.close()
