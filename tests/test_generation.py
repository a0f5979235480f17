import pytest
import torch

from mambakit.generation import process_logits
from tests.conftest import tiny_mamba


def test_greedy_generate_equals_argmax_of_repeated_forward():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (2, 5))
    out = model.generate(ids, max_new_tokens=8, temperature=0.0)
    expect = ids
    with torch.no_grad():
        for _ in range(8):
            nxt = model(expect)[:, -1, :50].argmax(-1)
            expect = torch.cat([expect, nxt[:, None]], 1)
    assert torch.equal(out, expect)


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (1, 4))
    kw = dict(max_new_tokens=20, temperature=1.5, top_k=30, top_p=0.95, min_p=0.01)
    a = model.generate(ids, seed=7, **kw)
    b = model.generate(ids, seed=7, **kw)
    c = model.generate(ids, seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 50  # vocab padding is never sampled


def test_eos_stops_and_pads_finished_rows():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (1, 3))
    greedy = model.generate(ids, max_new_tokens=6)
    first = int(greedy[0, 3])
    out = model.generate(ids, max_new_tokens=6, eos_token_id=first)
    assert out.shape == (1, 4) and int(out[0, -1]) == first


def test_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(process_logits(logits, top_k=2)).sum() == 3
    p = logits.softmax(-1)[0]
    kept = ~torch.isinf(process_logits(logits, top_p=float(p[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = ~torch.isinf(process_logits(logits, min_p=0.3))
    assert kept.tolist() == [[True, True, False, False, False]]
    pen = process_logits(logits, generated=torch.tensor([[0, 4]]), repetition_penalty=2.0)
    assert pen[0, 0] == 2.0 and pen[0, 4] == 0.0 and pen[0, 1] == 3.0


@pytest.mark.parametrize("kw,match", [(dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
                                      (dict(max_new_tokens=-2), "max_new_tokens")])
def test_bad_sampling_options(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_mamba().generate(torch.tensor([[1, 2]]), **kw)


