"""Training and evaluation of any registered language model."""
from mambakit.train.evaluate import evaluate
from mambakit.train.loop import TrainConfig, TrainingInterrupted, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "train", "evaluate"]
