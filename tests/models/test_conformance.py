"""One suite every registered model family must pass (new registry entries are covered automatically):
shapes, greedy generation, cache/step == forward, save/load, input checks, equal-size configs,
left-padded batches. Each family needs a "tiny" preset."""
import pytest
import torch

from mambakit.generation import pad_prompts
from mambakit.io.files import read_config
from mambakit.models import REGISTRY, build, from_config, load_model
from mambakit.models.budget import configs_for_budget, count_parameters
from tests.models.helpers import prefill_then_steps

VOCAB = 50
BUDGET = 300_000
PROMPTS = [[5, 9, 3, 7, 1, 8, 2], [4], [6, 2, 9, 11]]


@pytest.fixture(params=sorted(REGISTRY))
def name(request):
    return request.param


def tiny(name):
    return build(name, preset="tiny", d_model=32, vocab_size=VOCAB).eval()


def test_registry_name_is_the_config_model_type(name):
    assert REGISTRY[name].config_class.model_type == name       # what config.json records and load reads


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 7)])
def test_forward_shapes(name, batch, length):
    model = tiny(name)
    with torch.no_grad():
        logits = model(torch.randint(0, VOCAB, (batch, length)))
    assert logits.shape[:2] == (batch, length) and logits.shape[2] >= VOCAB
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("batch,length", [(2, 0), (0, 5), (0, 0)])
def test_empty_batch_or_sequence_gives_empty_logits_and_keeps_the_cache(name, batch, length):
    # before: mamba, s4, s4d, gru and lstm crashed on L=0 and s4/s4d on a batch of 0
    model = tiny(name)
    with torch.no_grad():
        logits = model(torch.zeros(batch, length, dtype=torch.long))
        assert logits.shape == (batch, length, model.config.padded_vocab_size)
        if batch:
            ids = torch.randint(0, VOCAB, (batch, 4))
            cache = model.allocate_cache(batch, max_seqlen=8)
            model(ids[:, :3], cache=cache)
            model(ids[:, :0], cache=cache)
            torch.testing.assert_close(model.step(ids[:, 3], cache), model(ids)[:, -1], atol=1e-4, rtol=1e-4)


def test_logits_to_keep_gives_the_last_positions_and_quantize_keeps_the_surface(name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_to_keep=3), full[:, -3:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids, logits_to_keep=9), full, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0"):
            model(ids, logits_to_keep=-1)
        import mambakit

        quantized = mambakit.quantize(model, "int8")                   # every family, one mechanism
        cache = quantized.allocate_cache(2)
        last = [quantized.step(ids[:, t], cache) for t in range(7)][-1]
        torch.testing.assert_close(last, quantized(ids, logits_to_keep=1)[:, 0], atol=1e-4, rtol=1e-4)


def test_greedy_generate_equals_argmax_of_repeated_forward(name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (2, 5))
    expected = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model(expected)[:, -1, :VOCAB].argmax(-1)
            expected = torch.cat([expected, nxt[:, None]], dim=1)
    assert torch.equal(model.generate(ids, max_new_tokens=6, temperature=0.0), expected)


def test_cache_step_and_prefill_equal_forward(name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(9)], 1)
        mixed, cache = prefill_then_steps(model, ids, 5, max_seqlen=9)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed, full, atol=1e-4, rtol=1e-4)
    assert cache.seqlen_offset == 9


def test_save_load_round_trip(name, tmp_path):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (2, 6))
    model.save_pretrained(tmp_path)
    assert read_config(tmp_path)["model_type"] == name
    for loaded in (type(model).from_pretrained(tmp_path), load_model(tmp_path)):
        assert type(loaded) is type(model) and loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded(ids), model(ids))


def test_bad_token_ids_are_rejected(name):
    model = tiny(name)
    for bad in (torch.tensor([[1, VOCAB]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ValueError, match=f"out of range for vocab_size {VOCAB}"):
            model(bad)
        with pytest.raises(ValueError, match="out of range"):
            model.generate(bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        model.step(torch.tensor([VOCAB]), model.allocate_cache(1))
    with pytest.raises(ValueError, match="int64 or int32 tensor"):
        model(torch.ones(1, 3))
    with pytest.raises(ValueError, match="int64 or int32 tensor, got torch.uint8"):
        model(torch.ones(1, 3, dtype=torch.uint8))   # nn.Embedding would crash inside forward
    with pytest.raises(ValueError, match="only 0 \\(pad\\) and 1"):
        model(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0.5, 1, 1]]))


def test_padded_batch_generation_equals_one_by_one(name):
    model = tiny(name)
    ids, mask = pad_prompts(PROMPTS, pad_id=3)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, temperature=0.0)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=6, temperature=0.0)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def budget_configs():
    return configs_for_budget(BUDGET, vocab_size=VOCAB)


def test_budget_sizes_every_family_within_5_percent(name, budget_configs):
    config = budget_configs[name]
    with torch.device("meta"):
        model = from_config(config)
    assert type(model) is REGISTRY[name]
    assert abs(model.num_parameters() - BUDGET) <= 0.05 * BUDGET
    assert count_parameters(config) == model.num_parameters()
