"""Run folders as transactions: who may write one, and whether one is complete.

The files themselves (all written atomically) are described in
:mod:`spikebridge.engine.checkpoint`. This module keeps a folder consistent across
processes and failures:

- **One writer.** ``train``, ``distill`` and ``convert`` hold an exclusive ``flock`` on
  ``RUN/.lock`` for the whole run (:func:`claim_run_dir`); a second process on the same
  ``--out`` is refused with one sentence (exit 2) instead of both writing mixed files. The
  kernel drops the lock when its holder dies, even by ``kill -9``, so the ``.lock`` file left
  behind never blocks a later run. (Without ``fcntl``, e.g. on Windows, there is no lock.)
- **Ours only.** A writer touches nothing it did not write. Each name it creates in the
  folder is recorded in ``.spikebridge-files`` *before* the file is created
  (:func:`spikebridge.engine.checkpoint.note_write`, called by every atomic write), so even
  after a ``kill -9`` the record lists everything the attempt may have left. A non-empty
  folder without such a record (and without a checkpoint or summary) is not ours: ``--out``
  naming it is refused with one sentence and the folder is left as it was; an existing file
  that was not recorded is never overwritten.
- **States.** A folder is ``new`` (absent, or no run file in it), ``unstarted``
  (``config.json`` but neither ``checkpoint.pt`` nor ``summary.json``: a run that failed or
  was killed before its first epoch was committed, or a conversion killed before
  ``summary.json``), ``interrupted`` (``checkpoint.pt``, no ``summary.json``), ``finished``
  (``summary.json``) or ``old-layout`` (the previous layout's ``train_state.pt`` without
  ``checkpoint.pt`` or ``summary.json``) -- see :func:`run_status`.
- **Failed runs.** Our choice: an ``interrupted`` run continues with ``--resume`` (bit-exact,
  from its last committed epoch); an ``unstarted`` folder of ours is simply started again by
  the same command (the files its previous attempt recorded are removed first), so a run that
  failed before its first checkpoint never blocks its rerun, even with changed options; a
  ``finished`` run is never overwritten. Folders of the previous layout: finished ones stay
  readable by every reader; unfinished ones are refused with a sentence (their two resume
  files may be an epoch apart, the bug this layout removes).
- **Readers** (eval, report, export, compare, analyze, ``convert --ann``,
  ``distill --teacher``, the demo) accept only complete folders: :func:`validate_run_dir`
  names, in one sentence, what is missing or damaged.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikebridge.config import build_section
from spikebridge.engine.checkpoint import (
    BEST_WEIGHTS,
    CHECKPOINT,
    CLAIMED,
    CONFIG_FILE,
    LAST_WEIGHTS,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    OUTPUTS_RECORD,
    RUN_RECORD,
    SUMMARY_FILE,
    TMP_SUFFIX,
    TRAIN_STATE,
    Attempt,
    load_state_into,
    load_weights,
    read_json,
    save_record,
)
from spikebridge.errors import ConfigError, RunError, SpikebridgeError, mark_resumable
from spikebridge.models import build_from_config

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

NEW, UNSTARTED, INTERRUPTED, FINISHED, OLD_LAYOUT = (
    "new", "unstarted", "interrupted", "finished", "old-layout",
)  # fmt: skip
# What a reader needs: "run" = a finished run with weights; "ann" = the same, not spiking
# (convert's input); "results" = a finished folder's summary (report; weights not needed).
RUN_KINDS = ("run", "ann", "results")
# The files a run writes: in an unfinished folder of an older spikebridge (which kept no
# record of what it wrote) these are taken as the run's own, so that --resume may rewrite them.
RUN_FILES = (CONFIG_FILE, CHECKPOINT, METRICS_FILE, BEST_WEIGHTS, SUMMARY_FILE, LAST_WEIGHTS)


def run_status(run_dir: str | Path) -> str:
    """The state of a run folder (module docstring): new, unstarted, interrupted, finished
    or old-layout."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return NEW
    for name, status in (
        (SUMMARY_FILE, FINISHED), (CHECKPOINT, INTERRUPTED), (TRAIN_STATE, OLD_LAYOUT),
        (CONFIG_FILE, UNSTARTED),
    ):  # fmt: skip
        if (run_dir / name).is_file():
            return status
    return NEW


# ----------------------------------------------------------------------------- reading


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.json`` as a dict of sections; RunError when it is damaged."""
    path = Path(run_dir) / CONFIG_FILE
    config = read_json(path)
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise RunError(
            f"{str(path)!r} does not hold a run configuration (a JSON object of sections); "
            "the file is damaged."
        )
    return config


def validate_run_dir(run_dir: str | Path, kind: str = "run") -> dict[str, Any]:
    """Check that ``run_dir`` is a complete run folder; return its config (``{}`` when a
    ``results`` folder has none).

    ``kind``: ``run`` (config.json, summary.json and model.safetensors), ``ann`` (the same,
    and the model is not spiking) or ``results`` (summary.json; config.json if present must
    be readable). RunError names, in one sentence, what is missing or damaged; a folder
    without ``summary.json`` did not finish, whatever else it holds.
    """
    if kind not in RUN_KINDS:
        raise ConfigError(f"run folder kind {kind!r} is unknown; expected one of {RUN_KINDS}.")
    run_dir = Path(run_dir)
    name = repr(str(run_dir))
    if not run_dir.exists():
        raise RunError(f"run folder {name} does not exist.")
    if not run_dir.is_dir():
        raise RunError(f"run folder {name} is a file, not a folder.")
    has_config = (run_dir / CONFIG_FILE).is_file()
    if not has_config and kind != "results":
        raise RunError(f"run folder {name} has no {CONFIG_FILE}; is it a spikebridge run folder?")
    config = read_run_config(run_dir) if has_config else {}
    if not (run_dir / SUMMARY_FILE).is_file():
        if not has_config:  # e.g. `spikebridge report` pointed at an unrelated folder
            raise RunError(f"{name} holds neither {CONFIG_FILE} nor {SUMMARY_FILE}; is it a "
                           "spikebridge run folder?")  # fmt: skip
        raise RunError(unfinished_reason(run_dir, config))
    if not isinstance(read_json(run_dir / SUMMARY_FILE), dict):
        raise RunError(f"{str(run_dir / SUMMARY_FILE)!r} does not hold a JSON object; the file "
                       "is damaged.")  # fmt: skip
    if kind != "results" and not (run_dir / BEST_WEIGHTS).is_file():
        raise RunError(f"run folder {name} has no {BEST_WEIGHTS}; its weights were deleted.")
    if kind == "ann" and (config.get("model", {}).get("neuron") or "conversion" in config):
        raise RunError(
            f"run folder {name} holds a spiking network; expected an ANN run (spikebridge "
            "train without --neuron)."
        )
    return config


def unfinished_reason(run_dir: Path, config: dict[str, Any]) -> str:
    """The sentence for a folder without ``summary.json``: running, interrupted or failed."""
    name = repr(str(run_dir))
    pid = lock_holder(run_dir)
    if pid is not None:
        return f"run folder {name} has no {SUMMARY_FILE} yet: process {pid} is still writing it."
    if "conversion" in config:
        return (
            f"run folder {name} has no {SUMMARY_FILE}: its conversion did not finish (run "
            "spikebridge convert again with the same --out)."
        )
    if run_status(run_dir) == INTERRUPTED:
        return (
            f"run folder {name} has no {SUMMARY_FILE}: its training stopped before the end "
            f"(continue it with --resume --out {run_dir})."
        )
    return (
        f"run folder {name} has no {SUMMARY_FILE}: its run did not finish (it failed or was "
        "killed before the end)."
    )


# ----------------------------------------------------------------------------- the lock


def lock_holder(run_dir: str | Path) -> int | None:
    """The process id holding ``RUN/.lock`` (-1 when unknown), None when nobody holds it."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _stored_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _stored_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or -1)
    except (OSError, ValueError):
        return -1


def check_out_path(run_dir: str | Path) -> Path:
    """ConfigError when ``--out`` names an existing file (a run folder must be a folder)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is a file; give a folder path for the run.")
    return run_dir


def check_output_file(path: str | Path, option: str, example: str = "results.json") -> Path:
    """ConfigError when an output file path (``option``, e.g. ``--json``) names a folder or
    lies in a folder that does not exist; checked before the work that produces it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r} is a folder; give a file path such as {str(path / example)!r}."
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r}: the output folder {str(path.parent)!r} does not exist; "
            "create it first."
        )
    return path


@contextmanager
def locked(run_dir: str | Path) -> Iterator[Path]:
    """Create ``run_dir`` and hold an exclusive lock on it for the block; RunError when
    another process holds it (the message names its pid)."""
    run_dir = check_out_path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"cannot create run folder {str(run_dir)!r} ({exc.strerror}).") from None
    try:
        _lock(fd, run_dir)
        yield run_dir
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, run_dir: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _stored_pid(fd)
        who = f" (pid {pid})" if pid > 0 else ""
        raise RunError(
            f"run folder {str(run_dir)!r} is in use by another spikebridge process{who}; wait "
            "for it to finish or choose another --out."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


# ----------------------------------------------------------------------------- claiming


@contextmanager
def claim_run_dir(
    run_dir: str | Path, resume: bool, resumable: bool = True, leftovers: Iterable[str] = ()
) -> Iterator[str]:
    """Lock ``run_dir`` for writing and yield its state (new, interrupted or finished); the
    lock is held until the block ends, and every file written into the folder meanwhile is
    recorded first in ``.spikebridge-files`` (:func:`~spikebridge.engine.checkpoint.note_write`).

    Refused (:func:`check_claimable`, before anything is created): a non-empty folder that
    is not a spikebridge run folder, a finished run unless ``resume`` (the caller then returns
    its summary), an interrupted one unless ``resume``, any existing run when the writer has
    no ``--resume`` (``resumable=False``, e.g. ``convert``), an old-layout unfinished run. An
    unstarted folder first loses the files its previous attempt recorded, and counts as new.
    When the block fails before an epoch was committed, the files this attempt recorded are
    removed, and the folder too when this call created it: a failed run leaves nothing to
    block or mislead its rerun, and no file it did not write is touched. (A ``kill -9`` skips
    this; the next claim cleans up instead.) ``leftovers``: names, besides the run files, that
    this writer makes; in an interrupted folder of an older spikebridge (no record) they and
    the run files count as its own.
    """
    run_dir = check_out_path(run_dir)
    created, lock_created = not run_dir.exists(), not (run_dir / LOCK_FILE).exists()
    check_claimable(run_dir, run_status(run_dir), resume, resumable)  # before the lock file
    with locked(run_dir) as path:
        status = run_status(path)
        check_claimable(path, status, resume, resumable)
        names = _start_attempt(path, status, (*RUN_FILES, *leftovers))
        key, attempt = path.resolve(), Attempt(path, names, created, lock_created)
        CLAIMED[key] = attempt
        try:
            yield NEW if status == UNSTARTED else status
        except BaseException as exc:
            _after_failure(attempt, exc, resumable)
            raise
        finally:
            del CLAIMED[key]


def check_claimable(run_dir: Path, status: str, resume: bool, resumable: bool = True) -> None:
    """ConfigError when a writer may not take a folder in ``status`` (see
    :func:`claim_run_dir`); also used before the lock, to refuse before loading data."""
    name = repr(str(run_dir))
    check_not_foreign(run_dir, status)
    if status == OLD_LAYOUT:
        raise ConfigError(
            f"run folder {name} holds an unfinished run of an older spikebridge ({TRAIN_STATE}), "
            "which cannot be resumed safely; start it again with another --out."
        )
    if status in (FINISHED, INTERRUPTED) and not resumable:
        raise ConfigError(f"run folder {name} already holds a run; choose another --out.")
    if status == FINISHED and not resume:
        raise ConfigError(f"run folder {name} already holds a finished run; choose another --out.")
    if status == INTERRUPTED and not resume:
        raise ConfigError(
            f"run folder {name} already holds a run, interrupted; pass --resume to continue it "
            "or choose another --out."
        )


def check_not_foreign(run_dir: Path, status: str) -> None:
    """ConfigError when ``run_dir`` is a non-empty folder that is not one of our run folders:
    no record of ours (``.spikebridge-files``), no checkpoint and no summary. Such a folder
    is never written to, so nothing in it can be lost (e.g. ``--out ~/Documents``)."""
    if status in (FINISHED, INTERRUPTED, OLD_LAYOUT) or not run_dir.is_dir():
        return
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if entries and recorded_files(run_dir) is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"--out {str(run_dir)!r} is a folder that is not a spikebridge run folder (it holds "
            f"{shown}); give a new or empty folder, or one of spikebridge's run folders."
        )


# ----------------------------------------------------------------------------- what is ours


def recorded_files(run_dir: str | Path, kind: str = RUN_RECORD) -> list[str] | None:
    """The names ``.spikebridge-files`` records for a folder of ``kind`` (None when the folder
    has no record, or one of another kind: an experiment's folder is not a run folder)."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    names = record.get("written") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RunError(f"{str(path)!r} does not hold a list of file names; the file is damaged.")
    if record.get("kind", RUN_RECORD) != kind:
        return None
    return [n for n in names if n and "/" not in n and n not in (".", "..")]


def prepare_output_folder(path: str | Path, names: Iterable[str]) -> Path:
    """Create the output folder of several runs (an experiment, the idsnn pipeline) and
    return it; ConfigError (nothing created) when it exists, is not empty and is neither
    recorded as such an output folder nor holds only ``names`` (the files and run folders
    this command writes there; an output folder of an older spikebridge)."""
    path, names = check_out_path(path), sorted(names)
    entries = {p.name for p in path.iterdir()} if path.is_dir() else set()
    ours = recorded_files(path, OUTPUTS_RECORD) is not None or entries <= set(names)
    if not ours:
        shown = ", ".join(sorted(entries - set(names))[:3])
        raise ConfigError(
            f"--out {str(path)!r} is a folder holding files spikebridge did not write "
            f"({shown}); give a new or empty folder, or this command's earlier --out."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create folder {str(path)!r} ({exc.strerror}).") from None
    if MANIFEST_FILE not in entries:
        save_record(path, names, OUTPUTS_RECORD)
    return path


def _start_attempt(path: Path, status: str, run_files: Iterable[str]) -> list[str]:
    """The names this attempt owns: the record, or (an interrupted or finished folder of an
    older spikebridge) its run files; a new or unstarted folder first loses them."""
    names = recorded_files(path)
    if names is None:
        adopt = status in (INTERRUPTED, FINISHED)
        names = [n for n in dict.fromkeys(run_files) if adopt and (path / n).exists()]
    for name in (*names, MANIFEST_FILE):  # temporary files of a write cut by a kill
        for tmp in path.glob(f".{glob.escape(name)}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
    if status in (NEW, UNSTARTED):
        _remove(path, names)
        names = []
    save_record(path, names)
    return names


def _after_failure(attempt: Attempt, exc: BaseException, resumable: bool) -> None:
    """After a failed block: an epoch committed -> mark a Ctrl-C resumable; else remove
    what this attempt recorded, then the record and lock file if this claim created the lock
    file and nothing else is left, and the folder if this claim created it."""
    path, status = attempt.path, run_status(attempt.path)
    if status == INTERRUPTED and resumable:
        mark_resumable(exc, path)
    if status not in (NEW, UNSTARTED):
        return
    _remove(path, attempt.names)
    attempt.names.clear()
    with suppress(SpikebridgeError, OSError):  # the original error is the one to report
        save_record(path, attempt.names)
        if attempt.lock_created and not {p.name for p in path.iterdir()} - {
            LOCK_FILE, MANIFEST_FILE,
        }:  # fmt: skip
            _remove(path, (MANIFEST_FILE, LOCK_FILE))
            if attempt.created:
                path.rmdir()


def _remove(run_dir: Path, names: Iterable[str]) -> None:
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ----------------------------------------------------------------------------- runs


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", kind: str = "run"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a FINISHED run folder's model with its selected weights: ``(model in eval
    mode, config)``.

    The folder is checked first (:func:`validate_run_dir` with
    ``kind``: ``run``, or ``ann`` for readers that need an ANN): RunError names what is
    missing or damaged (a folder without ``summary.json`` did not finish). ModelError when
    the weights do not fit the model the config describes (first bad key and shape). A
    converted run (``config.json`` has a ``conversion`` section) is rebuilt with
    :func:`spikebridge.conversion.build_converted` (BN folded, biased convs).
    """
    run_dir = Path(run_dir)
    config = validate_run_dir(run_dir, kind)
    try:
        model_cfg = build_section("model", config.get("model", {}))
    except ConfigError as exc:
        raise RunError(
            f"{str(run_dir / CONFIG_FILE)!r} describes no valid model: {str(exc).rstrip('.')}."
        ) from None
    state = load_weights(run_dir / BEST_WEIGHTS)
    if "conversion" in config:  # a converted run: BN folded away (spikebridge convert)
        from spikebridge.conversion.folding import build_converted  # lazy: conversion is above

        model = build_converted(model_cfg)
    else:
        model = build_from_config(model_cfg)
    load_state_into(model, state, str(run_dir / BEST_WEIGHTS))
    return model.to(device).eval(), config
