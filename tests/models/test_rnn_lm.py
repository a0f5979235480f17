"""GRU / LSTM LMs: step-by-step == full sequence, and left pads that never touch the state."""
import pytest
import torch

from mambakit import RNNLM, RNNConfig
from mambakit.generation import pad_prompts
from mambakit.models import GRULM, LSTMLM, GRUConfig, LSTMConfig, build

PROMPTS = [[5, 9, 3, 7, 1, 8, 2], [4], [6, 2, 9, 11]]


@pytest.fixture(params=["gru", "lstm"])
def model(request):
    return build(request.param, d_model=24, n_layer=2, vocab_size=50).eval()


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 9)])
def test_step_by_step_equals_full_sequence(model, batch, length):
    ids = torch.randint(0, 50, (batch, length))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(length)], 1)
        prefilled = model.allocate_cache(batch)
        model(ids, cache=prefilled)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    for got, want in zip(cache.state, prefilled.state):         # the same final state both ways
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cache.seqlen_offset == length


def test_prefill_then_decode_equals_forward(model):
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        pre = model(ids[:, :6], cache=cache)
        rest = torch.stack([model.step(ids[:, t], cache) for t in range(6, 10)], 1)
    torch.testing.assert_close(pre, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_padded_prefill_logits_and_state_equal_each_prompt_alone(model):
    ids, mask = pad_prompts(PROMPTS)
    cache = model.allocate_cache(3)
    with torch.no_grad():
        logits = model(ids, cache=cache, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            alone = model.allocate_cache(1)
            want = model(torch.tensor([prompt]), cache=alone)[0]
            torch.testing.assert_close(logits[row, ids.shape[1] - len(prompt):], want, atol=1e-5, rtol=1e-5)
            for got, ref in zip(cache.state, alone.state):
                torch.testing.assert_close(got[:, row], ref[:, 0], atol=1e-5, rtol=1e-5)


def test_pads_after_a_carried_state_leave_it_unchanged(model):
    first = torch.randint(0, 50, (2, 4))
    chunk, mask = torch.tensor([[0, 0, 7], [0, 5, 7]]), torch.tensor([[0, 0, 1], [0, 1, 1]])
    with torch.no_grad():
        cache = model.allocate_cache(2)
        model(first, cache=cache)
        out = model(chunk, cache=cache, attention_mask=mask)
        for row in range(2):
            alone = model.allocate_cache(1)
            model(first[row:row + 1], cache=alone)
            want = model(chunk[row, mask[row].bool()][None], cache=alone)[0, -1]
            torch.testing.assert_close(out[row, -1], want, atol=1e-5, rtol=1e-5)
            for got, ref in zip(cache.state, alone.state):
                torch.testing.assert_close(got[:, row], ref[:, 0], atol=1e-5, rtol=1e-5)


def test_padded_greedy_generation_equals_one_by_one(model):
    ids, mask = pad_prompts(PROMPTS, pad_id=3)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, temperature=0.0)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, temperature=0.0)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


def test_bad_masks_are_rejected(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="LEFT padding"):
        model(ids, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="must have input_ids' shape"):
        model(ids, attention_mask=torch.tensor([[1, 1]]))


def test_families_configs_and_cells():
    gru, lstm = build("gru", preset="tiny"), build("lstm", preset="tiny")
    assert type(gru) is GRULM and type(lstm) is LSTMLM and isinstance(gru, RNNLM)
    assert isinstance(gru.backbone.rnn.rnn, torch.nn.GRU) and isinstance(lstm.backbone.rnn.rnn, torch.nn.LSTM)
    assert len(lstm.allocate_cache(2).state) == 2 and len(gru.allocate_cache(2).state) == 1
    assert GRUConfig().to_dict()["model_type"] == "gru" and LSTMConfig().to_dict()["model_type"] == "lstm"
    assert gru.lm_head.weight is gru.backbone.embedding.weight
    with pytest.raises(ValueError, match="use GRUConfig or LSTMConfig"):
        RNNConfig()
    with pytest.raises(ValueError, match="dropout must be < 1"):
        GRUConfig(dropout=1.0)
    with pytest.raises(ValueError, match="dropout must be >= 0"):
        LSTMConfig(dropout=-0.1)


def test_training_reduces_loss(model):
    model.train()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 4])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
