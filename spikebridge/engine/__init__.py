"""Running things: the training loop, evaluation at every t, run folders and resume.

- :func:`fit` — one training loop for ANN, SNN and distillation (a *task* gives the loss);
- :func:`evaluate` — accuracy and loss at every t <= T in one pass (METHODS 3);
- :func:`train_run`, :func:`eval_run` — the library entry points behind ``spikebridge
  train`` / ``spikebridge eval``;
- :func:`load_run` — rebuild a finished run folder's selected model;
- :func:`validate_run_dir` — is a folder a complete run? (one sentence naming what is not).
"""

from spikebridge.engine.checkpoint import load_run, load_state_into, save_weights
from spikebridge.engine.evaluate import evaluate
from spikebridge.engine.rundir import validate_run_dir
from spikebridge.engine.runs import (
    eval_run,
    export_run,
    measure_run,
    resolve_device,
    setup_data,
    setup_model,
    train_run,
)
from spikebridge.engine.tasks import ClassificationTask, Task
from spikebridge.engine.train import FitResult, FitState, Loaders, fit

__all__ = [
    "ClassificationTask", "FitResult", "FitState", "Loaders", "Task", "eval_run", "evaluate",
    "export_run", "fit", "load_run", "measure_run", "load_state_into", "resolve_device",
    "save_weights", "setup_data", "setup_model", "train_run", "validate_run_dir",
]  # fmt: skip
