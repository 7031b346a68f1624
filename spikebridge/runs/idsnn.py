"""IDSNN runs (METHODS 1): ``distill_run`` and ``idsnn_run`` and their config sections
(the commands are :mod:`spikebridge.cli.distill` and :mod:`spikebridge.cli.idsnn`).

``distill_run(config)``: load a trained teacher run, build the (spiking) student, initialize
it from the teacher (METHODS 1.2, unless ``init=none``), train it with the KD loss
(METHODS 1.3; plain cross-entropy when ``kd_weight == 0``) through the engine's ``fit``
loop, and write a run folder like ``train`` does plus ``init_report.md`` / ``.json``.

``idsnn_run(config)``: the whole pipeline in one folder: ``teacher/`` (an ANN trained with
the same data, optimizer and seed settings, or reused with ``--teacher RUN``) and
``student/`` (``distill_run``).

Both reuse the engine's steps (``setup_data``, ``setup_model``, ``fit``, run folders) as
they are, so a distilled run is read by ``spikebridge eval`` like any other run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spikebridge.config import (
    DEFAULT_RUNS_DIR,
    TRAIN_SECTIONS,
    Config,
    load_config,
    option,
    register_section,
)
from spikebridge.engine import checkpoint as ckpt
from spikebridge.engine import distributed as ddp
from spikebridge.engine import rundir
from spikebridge.engine.memory import check_run_fits
from spikebridge.engine.tasks import ClassificationTask
from spikebridge.engine.train import FitResult, fit, print_flush
from spikebridge.errors import ConfigError, ModelError
from spikebridge.methods import KD_FORMS, DistillationTask, InitReport, init_from_teacher
from spikebridge.runs.measure import measure_step
from spikebridge.runs.setup import (
    check_resumable,
    claim_for_training,
    eval_batch,
    finished_summary,
    prepare_run_dir,
    setup_data,
    setup_model,
    setup_runtime,
    with_dataset,
    write_config,
)
from spikebridge.runs.train import make_summary, train_run

INIT_CHOICES = ("first", "spread", "none")
INIT_REPORT_MD = "init_report.md"
INIT_REPORT_JSON = "init_report.json"
IDSNN_SUMMARY = "idsnn.json"
PIPELINE_OUTPUTS = ("teacher", "student", IDSNN_SUMMARY)  # what idsnn writes into its --out
# A distilled student is an IDSNN spiking network unless the user says otherwise.
STUDENT_DEFAULTS: dict[str, Any] = {"model": {"neuron": "lif"}}
Log = Callable[[str], None]


@register_section("distill", flat_names={"shortcuts": "init_shortcuts"})
@dataclass
class DistillConfig:
    """Teacher, initialization and KD loss of a distilled student (METHODS 1.2, 1.3)."""

    teacher: str | None = option(
        None, "teacher run folder, a trained ANN (METHODS 1.2); needed unless --init none "
        "and --kd-weight 0",
    )  # fmt: skip
    init: str = option(
        "first", "student init from the teacher (METHODS 1.2): first = authors' block "
        "mapping, spread = blocks spread over the teacher's, none = random init",
        INIT_CHOICES,
    )  # fmt: skip
    shortcuts: bool = option(
        True, "init also copies projection shortcuts; --no-init-shortcuts leaves them random "
        "like the authors' code (METHODS 1.2)",
    )  # fmt: skip
    kd_weight: float = option(
        0.3, "weight w of the KD term (METHODS 1.3: 0.3 full IDSNN, 0.5 KD-only); 0 = no KD"
    )
    kd_temperature: float = option(4.0, "KD temperature tau (METHODS 1.3)")
    kd_form: str = option(
        "additive", "KD loss form (METHODS 1.3): additive CE + w tau^2 KL (authors' code) or "
        "convex (1 - w) CE + w tau^2 KL (paper's text)", KD_FORMS,
    )  # fmt: skip
    arm: str | None = option(
        None, "name of this run in an ablation; none = from init and kd_weight (baseline, "
        "init-only, kd-only, init+kd)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.kd_weight < 0 or not self.kd_temperature > 0:
            raise ConfigError(
                f"kd_weight is {self.kd_weight} and kd_temperature {self.kd_temperature}; "
                "expected kd_weight >= 0 and kd_temperature > 0."
            )


@register_section("idsnn")
@dataclass
class IdsnnConfig:
    """The teacher ANN that ``spikebridge idsnn`` trains first (METHODS 1, step 1)."""

    teacher_model: str = option("resnet34", "teacher ANN architecture (paper: ResNet-34)")
    teacher_width: float = option(1.0, "teacher channel multiplier")
    teacher_epochs: int | None = option(None, "teacher training epochs; none = --epochs")


DISTILL_SECTIONS = (*TRAIN_SECTIONS, "distill")
IDSNN_SECTIONS = (*DISTILL_SECTIONS, "idsnn")


def arm_name(init: str, kd_weight: float) -> str:
    """The ablation arm (METHODS 1.5) a run belongs to: baseline, init-only, kd-only, init+kd."""
    has_init, has_kd = init != "none", kd_weight > 0
    return {(False, False): "baseline", (True, False): "init-only",
            (False, True): "kd-only", (True, True): "init+kd"}[(has_init, has_kd)]  # fmt: skip


def resolve_config(config: Config | Mapping[str, Any], sections: tuple[str, ...]) -> Config:
    """A :class:`Config` from a Config or a mapping of keys (the student is LIF by default)."""
    if isinstance(config, Config):
        return config
    return load_config(sections, base=STUDENT_DEFAULTS, overrides=config)


# ----------------------------------------------------------------------------- distill steps


def check_teacher_needed(cfg: DistillConfig) -> None:
    """ConfigError when init or KD is asked for without a teacher run folder."""
    if not cfg.teacher and (cfg.init != "none" or cfg.kd_weight > 0):
        raise ConfigError(
            "distillation needs --teacher RUN (a trained ANN run folder) unless --init none "
            "and --kd-weight 0."
        )


def load_teacher(cfg: DistillConfig, device: Any) -> tuple[nn.Module | None, float | None]:
    """The teacher run's model (eval mode, on ``device``) and its test accuracy (or None);
    the teacher folder must be a finished run (RunError otherwise)."""
    if not cfg.teacher:
        return None, None
    teacher, _ = rundir.load_run(cfg.teacher, device, kind="ann")  # an SNN teacher is refused
    accuracy = ckpt.read_json(Path(cfg.teacher) / ckpt.SUMMARY_FILE).get("test_accuracy")
    return teacher, accuracy


def check_teacher_fits(teacher: nn.Module | None, num_classes: int, cfg: DistillConfig) -> None:
    """ModelError when KD would compare logits of different class counts."""
    if teacher is None or cfg.kd_weight == 0:
        return
    t_classes = teacher.config.num_classes
    if t_classes != num_classes:
        raise ModelError(
            f"the teacher {cfg.teacher!r} has {t_classes} classes but the dataset has "
            f"{num_classes}; KD needs the same classes (use --kd-weight 0 for init only)."
        )


def apply_init(
    student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig, run_dir: Path, log: Log
) -> InitReport | None:
    """Initialize ``student`` from ``teacher`` (METHODS 1.2); save and announce the report."""
    if cfg.init == "none" or teacher is None:
        return None
    report = init_from_teacher(student, teacher, cfg.init, cfg.shortcuts)  # same on every rank
    if not ddp.is_main_process():
        return report
    ckpt.write_text(run_dir / INIT_REPORT_MD, report.to_markdown() + "\n")
    ckpt.write_json(run_dir / INIT_REPORT_JSON, report.to_dict())
    log(report.summary())
    return report


def make_task(cfg: DistillConfig, teacher: nn.Module | None) -> Any:
    """:class:`DistillationTask` (METHODS 1.3), or plain CE when ``kd_weight == 0``."""
    if cfg.kd_weight == 0 or teacher is None:
        return ClassificationTask()
    return DistillationTask(teacher, cfg.kd_weight, cfg.kd_temperature, cfg.kd_form)


def distill_summary(
    config: Config, model: nn.Module, result: FitResult, run_dir: Path,
    teacher_accuracy: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``train``'s summary plus the arm, the distillation settings and the teacher's accuracy."""
    d = config.distill
    summary = make_summary(config, model, result, run_dir)
    summary.update(
        arm=d.arm or arm_name(d.init, d.kd_weight), init=d.init, init_shortcuts=d.shortcuts,
        kd_weight=d.kd_weight, kd_temperature=d.kd_temperature, kd_form=d.kd_form,
        teacher=d.teacher, teacher_accuracy=teacher_accuracy,
    )  # fmt: skip
    if "accuracy_by_timestep" not in summary and result.test:
        summary["accuracy_by_timestep"] = result.test["accuracy_by_timestep"]
    return summary


def distill_run(config: Config | Mapping[str, Any], log: Log = print_flush) -> dict[str, Any]:
    """Init a student from a teacher run and train it with KD (METHODS 1.2-1.4); the summary.

    ``config`` has the sections data, model, optim, train, distill (or is a mapping of keys,
    e.g. ``{"teacher": "runs/t", "dataset": "synthetic", "kd_weight": 0.3}``). The run folder
    holds config.json (with the distill section), metrics.jsonl, model.safetensors,
    summary.json (adds arm, teacher_accuracy, accuracy_by_timestep) and init_report.md/.json.
    """
    config = resolve_config(config, DISTILL_SECTIONS)
    check_teacher_needed(config.distill)
    with ddp.session(setup_runtime(config.train)) as device:  # torchrun: one rank per device
        summary = _distill_steps(config, device, ddp.main_only(log))
        ddp.barrier()  # the other ranks wait for rank 0's files
    return summary


def _distill_steps(config: Config, device: Any, log: Log) -> dict[str, Any]:
    """The steps of :func:`distill_run` on this rank (the teacher runs on every rank, frozen);
    only rank 0 writes the run folder."""
    run_dir = ddp.on_main(prepare_run_dir, config)  # one name (it has a timestamp) for all
    config = config.replace("train", out=str(run_dir))
    if config.train.resume and (done := finished_summary(run_dir, log)) is not None:
        return done
    teacher, teacher_accuracy = load_teacher(config.distill, device)
    loaders, info = setup_data(config.data, config.train.seed, device)
    config = with_dataset(config, info)
    if config.train.resume:
        check_resumable(run_dir, config)
    check_teacher_fits(teacher, info.num_classes, config.distill)
    check_run_fits(config, info.image_size, eval_batch(config.data), device.type)
    model = setup_model(config.model, config.train.seed, device)
    reports = (INIT_REPORT_MD, INIT_REPORT_JSON)  # a previous attempt's, removed when unstarted
    with claim_for_training(run_dir, config, reports) as status:  # locked for the whole run
        if status == rundir.FINISHED:  # finished by another process since the first check
            return finished_summary(run_dir, log) or {}
        if config.train.resume:
            check_resumable(run_dir, config)  # again, under the lock
        apply_init(model, teacher, config.distill, run_dir, log)
        write_config(run_dir, config, status)
        task = make_task(config.distill, teacher)
        result = fit(model, task, loaders, config.optim, config.train, run_dir, log)
        summary = distill_summary(config, model, result, run_dir, teacher_accuracy)
        summary["dataset_info"] = info.to_dict()
        summary.update(measure_step(model, loaders, log))  # firing, SOPs, energy (METHODS 3)
        if ddp.is_main_process():
            ckpt.write_json(run_dir / ckpt.SUMMARY_FILE, summary)  # last: the run is finished
    return summary


# ----------------------------------------------------------------------------- idsnn pipeline


def pipeline_dir(config: Config) -> Path:
    """``--out`` or ``runs/<dataset>-idsnn-<teacher>-to-<student>-<time>``."""
    if config.train.out:
        return Path(config.train.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{config.data.dataset}-idsnn-{config.idsnn.teacher_model}-to-{config.model.name}"
    return Path(DEFAULT_RUNS_DIR) / f"{name}-{stamp}"


def teacher_config(config: Config, out: Path) -> Config:
    """The teacher ANN's train config: the student's data/optim/train, the idsnn model."""
    t, m = config.idsnn, config.model
    values = {s: config.to_dict()[s] for s in ("data", "optim", "train")}
    stem = {k: getattr(m, k) for k in ("stem", "stem_padding", "stem_pool") if hasattr(m, k)}
    values["model"] = {"name": t.teacher_model, "width": t.teacher_width, **stem}
    values["train"].update(out=str(out), epochs=t.teacher_epochs or config.train.epochs)
    return load_config(TRAIN_SECTIONS, overrides=values)


def ensure_teacher(config: Config, out: Path, log: Log) -> str:
    """The teacher run folder: ``--teacher``, a finished ``out`` (reused), or trained now."""
    if config.distill.teacher:
        return config.distill.teacher
    if rundir.run_status(out) == rundir.FINISHED:
        log(f"reusing the finished teacher run {out}")
        return str(out)
    cfg = teacher_config(config, out)
    resume = rundir.run_status(out) == rundir.INTERRUPTED
    log(f"training the teacher ANN {cfg.model.name} (width {cfg.model.width}) in {out}")
    train_run(cfg.replace("train", resume=resume), log)
    return str(out)


def idsnn_run(config: Config | Mapping[str, Any], log: Log = print_flush) -> dict[str, Any]:
    """Teacher ANN -> init -> distill, in one folder (``teacher/``, ``student/``, idsnn.json).

    Returns ``{"out_dir", "teacher": teacher summary, "student": student summary}``. A
    finished ``teacher/`` is reused, so an interrupted pipeline can be started again.
    """
    config = resolve_config(config, IDSNN_SECTIONS)
    with ddp.session(setup_runtime(config.train)):  # under torchrun: one group for both runs
        result = _idsnn_steps(config, ddp.main_only(log))
        ddp.barrier()
    return result


def _idsnn_steps(config: Config, log: Log) -> dict[str, Any]:
    """The steps of :func:`idsnn_run` on this rank; only rank 0 writes ``idsnn.json``."""
    out = ddp.on_main(pipeline_dir, config)  # one name (it has a timestamp) for all ranks
    if ddp.is_main_process():
        rundir.prepare_output_folder(out, PIPELINE_OUTPUTS)
    teacher_dir = ensure_teacher(config, out / "teacher", log)
    student_dir = out / "student"
    resume = config.train.resume or rundir.run_status(student_dir) == rundir.INTERRUPTED
    student = config.replace("distill", teacher=teacher_dir)
    student = student.replace("train", out=str(student_dir), resume=resume)
    sections = {s: getattr(student, s) for s in DISTILL_SECTIONS}
    summary = distill_run(Config(**sections), log)
    teacher = ckpt.read_json(Path(teacher_dir) / ckpt.SUMMARY_FILE)  # finished: validated
    result = {"out_dir": str(out), "teacher": teacher, "student": summary}
    if ddp.is_main_process():
        ckpt.write_json(out / IDSNN_SUMMARY, result)
    return result
