"""Training and evaluation of any registered language model."""
from mambakit.train.loop import TrainConfig, evaluate, train

__all__ = ["TrainConfig", "train", "evaluate"]
