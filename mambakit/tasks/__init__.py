"""Synthetic tasks from the Mamba paper (§4.1): Selective Copying and Induction Heads, and Zoology's MQAR — generators,
training, evaluation and length extrapolation for any registered model."""
from mambakit.tasks.common import IGNORE_INDEX
from mambakit.tasks.evaluate import evaluate_synth
from mambakit.tasks.induction_heads import induction_heads
from mambakit.tasks.mqar import mqar
from mambakit.tasks.runner import PAPER_RECIPES, RECIPES, TASKS, SynthConfig, run_synth, train_synth
from mambakit.tasks.selective_copying import selective_copying

__all__ = ["IGNORE_INDEX", "TASKS", "SynthConfig", "evaluate_synth", "induction_heads", "mqar", "PAPER_RECIPES", "RECIPES", "run_synth",
           "selective_copying", "train_synth"]
