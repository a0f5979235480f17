"""Synthetic tasks from the Mamba paper (§4.1): Selective Copying and Induction Heads — generators,
training, evaluation and length extrapolation for any registered model."""
from mambakit.tasks.common import IGNORE_INDEX
from mambakit.tasks.induction_heads import induction_heads
from mambakit.tasks.runner import TASKS, SynthConfig, evaluate_synth, run_synth, train_synth
from mambakit.tasks.selective_copying import selective_copying

__all__ = ["IGNORE_INDEX", "TASKS", "SynthConfig", "evaluate_synth", "induction_heads", "run_synth",
           "selective_copying", "train_synth"]
