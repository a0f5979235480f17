import os

import mambakit  # noqa: F401  (before torch: on a busy machine OpenMP then waits passively, mambakit/threads.py)

# isort: split
import pytest
import torch

# Triton reads TRITON_INTERPRET once, when it is imported: set here, before anything imports it,
# so that without a GPU its kernels run on CPU tensors under the interpreter (test_*_triton.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mamba(**overrides):
    from mambakit import MambaConfig, MambaLM

    fields = dict(d_model=32, n_layer=2, vocab_size=50, d_state=8)
    fields.update(overrides)
    return MambaLM(MambaConfig(**fields)).eval()
