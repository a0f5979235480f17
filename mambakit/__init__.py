"""mambakit: Mamba and its lineage — RNN, Transformer, SSM, HiPPO/S4, selective scan — on any machine."""
from mambakit.threads import prefer_passive_waiting

prefer_passive_waiting()            # before torch loads OpenMP: see mambakit/threads.py

from mambakit.config import Mamba2Config, MambaConfig  # noqa: E402
from mambakit.models import RNNLM, Mamba2LM, MambaLM, RNNConfig, TransformerConfig, TransformerLM, build  # noqa: E402
from mambakit.models.quantize import quantize  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MambaConfig", "MambaLM", "Mamba2Config", "Mamba2LM", "TransformerConfig", "TransformerLM", "RNNConfig", "RNNLM", "build", "quantize",
           "__version__"]
