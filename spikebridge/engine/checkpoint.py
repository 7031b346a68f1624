"""Run-folder files: safetensors weights, JSON config/summary, the epoch checkpoint; all atomic.

DESIGN "a run is a folder" and "checkpoints rebuild themselves". A training run folder holds:

- ``config.json``: the resolved config; ``config["model"]`` rebuilds the model;
- ``checkpoint.pt``: everything needed to continue after the latest completed epoch, in ONE
  file (current weights, selected weights, optimizer, schedule, AMP scaler and RNG states,
  progress and the metrics records). Writing it is the commit point of an epoch: a process
  killed at any moment leaves either the previous epoch's checkpoint or the new one, never
  a mix (the old layout, ``last.safetensors`` + ``train_state.pt``, could be left one epoch
  apart and then never resumed);
- ``model.safetensors`` (the selected, best-validation weights) and ``metrics.jsonl`` (one
  JSON line per epoch): derived from ``checkpoint.pt`` and written after it; a resume
  rewrites them from it, so a kill between the files cannot make them disagree;
- ``summary.json``: the final results, written LAST; a folder is finished exactly when it
  has one, and every reader requires it (:func:`spikebridge.engine.rundir.validate_run_dir`);
- ``.lock``: locked (``flock``) by the process writing the folder (:mod:`.rundir`);
- ``.spikebridge-files``: the names the writer created, each recorded before it is created
  (:func:`note_write`); spikebridge removes nothing else.

Every file is written to a temporary file in the same folder, flushed to disk and moved into
place with ``os.replace``, so an interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from spikebridge.errors import ModelError, RunError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
BEST_WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
# The names this folder's writer created, recorded before each is created (write-ahead): what
# marks a folder as ours, and all that a failed or restarted attempt may remove (rundir).
MANIFEST_FILE = ".spikebridge-files"
CHECKPOINT_FORMAT = 2  # 1 was the two-file layout below
# The old layout's resume files: finished old runs stay readable, unfinished ones are refused.
LAST_WEIGHTS = "last.safetensors"
TRAIN_STATE = "train_state.pt"
FILE_MODE = 0o644
TMP_SUFFIX = ".tmp"  # temporary files: ".<name>.<random>.tmp" beside their target
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel


# Kinds of record: a run folder, or the output folder of several runs (experiment, idsnn).
RUN_RECORD, OUTPUTS_RECORD = "run", "outputs"
MANIFEST_NOTE = (
    "written by spikebridge: the files of this run, each recorded before it was created; a "
    "failed or restarted run removes only these"
)


@dataclass
class Attempt:
    """A claimed folder: the names this attempt recorded, and whether the claim created the
    folder and its lock file (so that a failure can take back exactly those)."""

    path: Path
    names: list[str]
    created: bool
    lock_created: bool


# Folders claimed by this process (resolved) -> their attempt (see note_write).
CLAIMED: dict[Path, Attempt] = {}


def note_write(path: str | Path) -> None:
    """Record ``path`` as this run's before it is created (write-ahead), when its folder is
    claimed by this process; RunError when it exists and was not written by this run (it is
    never overwritten). Every writer of a claimed folder calls this (atomic_write does)."""
    path = Path(path)
    attempt = CLAIMED.get(path.parent.resolve())
    if attempt is None or path.name in attempt.names or path.name == MANIFEST_FILE:
        return
    if path.exists() or path.is_symlink():
        raise RunError(
            f"{str(path)!r} exists and was not written by this run, which never overwrites it; "
            "move it away or choose another --out."
        )
    attempt.names.append(path.name)
    save_record(path.parent, attempt.names)


def save_record(run_dir: Path, names: list[str], kind: str = RUN_RECORD) -> None:
    write_json(run_dir / MANIFEST_FILE, {"kind": kind, "written": names, "note": MANIFEST_NOTE})


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    note_write(path)  # recorded before anything is created, or refused when not ours
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise RunError(f"cannot write {str(path)!r} ({exc.strerror}).") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files; run folders are meant to be shared
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, permissions: one sentence, nothing half-written left
        Path(tmp).unlink(missing_ok=True)
        raise RunError(f"cannot write {str(path)!r} ({exc.strerror or exc}).") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _flush_to_disk(path: str) -> None:
    """``fsync`` a written file, so the rename never exposes data still only in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; RunError (one sentence, with the position) when it is unreadable or
    damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunError(f"cannot read {str(path)!r} ({exc.strerror}).") from None
    return _parse_json(data, path)


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunError(f"{str(path)!r} is not UTF-8 text; the file is damaged.") from None
    except json.JSONDecodeError as exc:
        raise RunError(
            f"{str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); the file is damaged."
        ) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    return [_parse_json(line, path) for line in lines if line.strip()]


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Atomically (re)write a JSON-lines file: one record per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def unwrap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes (torch.compile, DDP) from every key."""
    clean = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def save_weights(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically save a model's (unwrapped) state dict as safetensors, on CPU."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {
        k: v.detach().cpu().clone().contiguous() for k, v in unwrap_state_dict(state).items()
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; ModelError when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist.")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"weights file {str(path)!r} is not a readable safetensors file ({exc})."
        ) from None


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header (e.g. the epoch of last.safetensors)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` after checking every key and shape.

    ModelError names the first missing, unexpected or mismatching key. Neuron thresholds may
    change shape (scalar <-> per-channel): the neuron adopts the stored one.
    """
    state = unwrap_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected {unexpected[0]!r}"
        raise ModelError(f"weights in {source} do not fit the model: the file {what}.")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = model.state_dict()  # neurons have adopted stored threshold shapes by now
        bad = next((k for k in own if own[k].shape != state[k].shape), None)
        if bad is None:
            raise ModelError(f"weights in {source} do not fit the model ({exc}).") from None
        raise ModelError(
            f"weights in {source} do not fit the model: {bad!r} has shape "
            f"{tuple(state[bad].shape)} in the file but {tuple(own[bad].shape)} in the model."
        ) from None


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step may touch: torch CPU/CUDA, numpy, python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Atomically ``torch.save`` an epoch checkpoint (tensors and plain Python values only)."""
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an epoch checkpoint (``weights_only``: no arbitrary pickles); RunError when it is
    unreadable or of another format."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"checkpoint {str(path)!r} is unreadable ({reason}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(
            f"checkpoint {str(path)!r} is not a format-{CHECKPOINT_FORMAT} spikebridge "
            "checkpoint; it cannot be resumed."
        )
    return state
