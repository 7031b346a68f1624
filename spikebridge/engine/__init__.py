"""Running things: the training loop, evaluation at every t, run folders and resume.

- :func:`fit` — one training loop for ANN, SNN and distillation (a *task* gives the loss);
- :func:`evaluate` — accuracy and loss at every t <= T in one pass (METHODS 3);
- :func:`load_run` — rebuild a finished run folder's selected model;
- :func:`validate_run_dir` — is a folder a complete run? (one sentence naming what is not).

The library entry points that chain these steps (``train_run``, ``eval_run``, ...) are one
layer up, in :mod:`spikebridge.runs`.
"""

from spikebridge.engine.checkpoint import load_state_into, save_weights
from spikebridge.engine.evaluate import evaluate
from spikebridge.engine.rundir import load_run, validate_run_dir
from spikebridge.engine.tasks import ClassificationTask, Task
from spikebridge.engine.train import FitResult, FitState, Loaders, fit

__all__ = [
    "ClassificationTask", "FitResult", "FitState", "Loaders", "Task", "evaluate", "fit",
    "load_run", "load_state_into", "save_weights", "validate_run_dir",
]  # fmt: skip
