"""configs_for_budget: depth choices, alignment of the searched width, and clear refusals."""
import pytest

from mambakit.models.budget import configs_for_budget, count_parameters


def test_depth_override_for_all_or_per_family():
    same = configs_for_budget(400_000, names=["mamba", "gru"], n_layer=3)
    assert [c.n_layer for c in same.values()] == [3, 3]
    per = configs_for_budget(400_000, names=["mamba", "transformer"], n_layer={"mamba": 6})
    assert per["mamba"].n_layer == 6 and per["transformer"].n_layer == 2     # the family default
    for config in (*same.values(), *per.values()):
        assert abs(count_parameters(config) - 400_000) <= 0.05 * 400_000


def test_width_is_a_multiple_of_8_when_that_fits():
    configs = configs_for_budget(2_000_000, vocab_size=257)
    assert all(c.d_model % 8 == 0 for c in configs.values())
    assert set(configs) >= {"mamba", "transformer", "gru", "lstm"}


def test_impossible_or_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="cannot size mamba to 1,000 parameters within 5%"):
        configs_for_budget(1_000, names=["mamba"])
    with pytest.raises(ValueError, match="params must be >= 1"):
        configs_for_budget(0)
    with pytest.raises(ValueError, match="unknown model 'rwkv'"):
        configs_for_budget(100_000, names=["rwkv"])
