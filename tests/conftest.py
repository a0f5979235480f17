import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mamba(**overrides):
    from mambakit import MambaConfig, MambaLM

    fields = dict(d_model=32, n_layer=2, vocab_size=50, d_state=8)
    fields.update(overrides)
    return MambaLM(MambaConfig(**fields)).eval()
