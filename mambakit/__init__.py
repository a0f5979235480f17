"""mambakit: Mamba and its lineage — RNN, Transformer, SSM, HiPPO/S4, selective scan — on any machine."""
from mambakit.config import Mamba2Config, MambaConfig
from mambakit.models import Mamba2LM, MambaLM, RNNConfig, RNNLM, TransformerConfig, TransformerLM, build
from mambakit.models.quantize import quantize

__version__ = "0.1.0"
__all__ = ["MambaConfig", "MambaLM", "Mamba2Config", "Mamba2LM", "TransformerConfig", "TransformerLM", "RNNConfig", "RNNLM", "build", "quantize",
           "__version__"]
