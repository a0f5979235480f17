"""mambakit: Mamba and its lineage — RNN, Transformer, SSM, HiPPO/S4, selective scan — on any machine."""
from mambakit.config import MambaConfig
from mambakit.models import MambaLM, RNNConfig, RNNLM, TransformerConfig, TransformerLM, build

__version__ = "0.1.0"
__all__ = ["MambaConfig", "MambaLM", "TransformerConfig", "TransformerLM", "RNNConfig", "RNNLM", "build",
           "__version__"]
