"""``spikebridge demo``: the whole story on Fashion-MNIST in one command, sized for 2 CPU cores.

1. a teacher ANN (a larger ResNet),
2. a directly trained spiking ResNet (LIF, T=4): the baseline,
3. an IDSNN student (same architecture, T, epochs and seed as the baseline), initialized
   from the teacher and trained with knowledge distillation (METHODS 1),
4. a conversion-aware ANN (QCFS activations, pre-add blocks) converted to an IF spiking
   network with QCFS thresholds and with our threshold tuning (METHODS 2), accuracy at every
   t <= 16,
then one comparison table (accuracy, firing rate, SOPs, energy estimate) in
``OUT/demo.md`` and ``OUT/demo.json``. Finished steps are reused when the demo is re-run.

Independent steps run side by side in worker processes (``jobs``, default 2 where torch
has 2 threads or more), one torch thread each: these small networks use a second thread
poorly (a Spiking ResNet-20 x0.5 step is about 1.4x faster on 2 threads than on 1), so two
one-thread processes finish the demo sooner than one two-thread process.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Any

import torch

from spikebridge.analysis import measurement_at
from spikebridge.config import Config, DataConfig, OptimConfig, TrainConfig
from spikebridge.config_commands import DemoConfig
from spikebridge.demo_progress import (
    PLAIN_EVERY_S,
    REDRAW_EVERY_S,
    LaneBoard,
    install_queue,
    run_reported,
)
from spikebridge.engine.checkpoint import read_json
from spikebridge.engine.rundir import prepare_output_folder, validate_run_dir
from spikebridge.errors import ConfigError, SpikebridgeError
from spikebridge.models import ModelConfig
from spikebridge.runs.conversion import convert_run
from spikebridge.runs.idsnn import DistillConfig, distill_run
from spikebridge.runs.train import train_run

# The demo budget, sized for about 15 minutes on 2 quiet CPU cores in two one-thread lanes
# (docs/RESULTS.md has the measured time). lr 0.1 (SGD, cosine with warm-up) and no
# crop/flip augmentation, which in this under-fitting regime only slows learning (3-epoch
# Spiking ResNet-20 screen on 5000 images: 62.4 % at lr 0.05, 70.1 % at 0.1, 60.1 % with
# augmentation; lr 0.2 was worse again for the IDSNN student: results-history.md, "Demo
# budget"). The teacher trains on the whole training file (2 epochs: 89.6 % where 3 epochs
# on 16,000 images gave 83.9 %); the spiking students take 4 epochs of a 16,000-image subset
# (more epochs beat more images at equal cost: 2 x 24,000 gave 84.0 %, 3 x 16,000 85.1 %).
# 3000 held-out images select the epoch (1000 were too noisy to pick the last one). The plain
# ReLU teacher is not converted here: `spikebridge convert` does it.
# Pinned: values that were defaults when the demo's figures were recorded (batch 64, no
# gradient clipping, QCFS ANN without zero-initialised residual branches), so they reproduce.
# Each is a typed config section, the objects `spikebridge train` builds from its options.
DEMO_DATA = DataConfig(dataset="fashion-mnist", subset=16000, val_size=3000, batch_size=64,
                       augment="none")  # fmt: skip
TEACHER_DATA = dataclasses.replace(DEMO_DATA, subset=None)  # the whole file, less val_size
DEMO_OPTIM = OptimConfig(lr=0.1, grad_clip=None)
TEACHER = ModelConfig(name="resnet32", width=0.5)
TEACHER_EPOCHS = 2
STUDENT = ModelConfig(name="resnet20", width=0.5, neuron="lif", timesteps=4)
STUDENT_EPOCHS = 4
STUDENT_KD = DistillConfig(init="first", kd_weight=0.3)  # the teacher is set per demo folder
# A conversion-aware ANN (QCFS, pre-add blocks; METHODS 2.2, 2.5) beside the teacher.
QCFS_ANN = ModelConfig(name="resnet20", width=0.5, activation="qcfs", qcfs_levels=4,
                       block="pre-add", threshold=2.0, zero_init_residual=False)  # fmt: skip
QCFS_EPOCHS = 3
CONVERT_TIMESTEPS = list(range(1, 17))
DEMO_OUTPUTS = ("demo.md", "demo.json")
QCFS_METHODS = ("qcfs", "ttrbr")
CALIBRATION_IMAGES = 512
CONVERT_TEST_IMAGES = 2000


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a COMPLETE run folder (config, weights, summary.json written last:
    ``validate_run_dir``), else None so the step runs (a folder cut before its summary, e.g.
    a killed conversion, is never taken as finished)."""
    try:
        validate_run_dir(run_dir)
    except SpikebridgeError:
        return None
    return read_json(run_dir / "summary.json")


def _row(name: str, s: dict[str, Any], t: int) -> dict[str, Any]:
    """One table row: a spiking run at ``t`` (accuracy, firing rate, SOPs and energy over the
    first t steps, METHODS 3; none where the run has no figures at that t), an ANN at T = 1."""
    by_t = s.get("accuracy_by_timestep") or {}
    acc = by_t.get(str(t), s.get("test_accuracy")) if by_t else s.get("test_accuracy")
    m = (measurement_at(s, t) or {}) if by_t else {}
    return {
        "network": name,
        "T": t if by_t else "-",
        "test_accuracy": acc,
        "firing_rate": m.get("firing_rate"),
        "sops_per_image": m.get("sops_per_image"),
        "macs_per_image": s.get("macs_per_image"),
        "energy_uj": m.get("energy_estimate_uj") if by_t else s.get("ann_energy_estimate_uj"),
        "train_time_s": s.get("train_time_s"),
        "test_images": s.get("test_samples"),
    }


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "M":
        return f"{value / 1e6:.2f} M"
    if kind == "s":
        return f"{value:.0f} s"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The final comparison as a markdown table."""
    head = (
        "| network | T | test acc. | test images | firing rate | SOPs/img | MACs/img (ANN) "
        "| energy est. (µJ) | train time |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['T']} | {_fmt(r['test_accuracy'], 'pct')} | "
            f"{_fmt(r.get('test_images'), 'n')} | "
            f"{_fmt(r['firing_rate'], 'f')} | {_fmt(r['sops_per_image'], 'M')} | "
            f"{_fmt(r['macs_per_image'], 'M')} | {_fmt(r['energy_uj'], 'f')} | "
            f"{_fmt(r['train_time_s'], 's')} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Step:
    """One demo step: ``make(*args, log=...)`` fills ``run_dir``; it runs once the steps
    named in ``after`` are finished. ``make`` is a module-level function, so a worker
    process can run it."""

    name: str
    run_dir: Path
    make: Callable[..., Any]
    args: tuple[Any, ...]
    after: tuple[str, ...] = field(default=())


def _convert(
    ann_dir: Path, method: str, out: Path, timesteps: list[int], calibration: int,
    test_images: int, log: Callable[[str], None],
) -> Any:  # fmt: skip
    options = {"ann_run": str(ann_dir), "method": method, "report_at": timesteps,
               "calibration_size": calibration, "out": str(out), "test_images": test_images}  # fmt: skip
    return convert_run(options, log=log)


def _worker_init(threads: int, queue: SimpleQueue | None = None) -> None:
    torch.set_num_threads(threads)
    install_queue(queue)  # the step's log lines and training ticks go to the main process
    # Ctrl-C: a worker leaves at once, without a traceback of its own; its run folder is
    # as after a kill (transactional: it resumes), and the main process reports the stop
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))


@dataclass
class _Schedule:
    """The steps left, those done, and the scheduler's own lines (``log``)."""

    pending: list[Step]
    finished: Callable[[Path], Any]
    log: Callable[[str], None]
    done: set[str] = field(default_factory=set)
    start: float = field(default_factory=time.perf_counter)

    def ready(self) -> list[Step]:
        return [s for s in self.pending if all(a in self.done for a in s.after)]

    def skip_finished(self) -> None:
        """Reuse every finished step whose needs are done, down the chains: a finished
        step's finished followers are reused too, never started again."""
        while reused := [s for s in self.ready() if self.finished(s.run_dir) is not None]:
            for s in reused:
                self.log(f"[demo] {s.name}: reusing {s.run_dir}")
                self.pending.remove(s)
                self.done.add(s.name)

    def begin(self, s: Step) -> None:
        self.pending.remove(s)
        self.log(f"[demo] {time.perf_counter() - self.start:5.0f} s  {s.name} -> {s.run_dir}")

    def end(self, s: Step, note: str | None = None) -> None:
        self.done.add(s.name)
        if note is not None:
            self.log(f"[demo] {time.perf_counter() - self.start:5.0f} s  {s.name}: {note}")

    def refuse_cycle(self) -> None:  # steps left and none ready: they wait on each other
        if self.pending and not self.ready():
            raise ValueError(f"demo steps wait on each other: {[s.name for s in self.pending]}")


def run_steps(
    steps: list[Step],
    jobs: int = 1,
    log: Callable[[str], None] = print,
    threads: int = 1,
    finished: Callable[[Path], Any] = _finished,
    tty: bool | None = None,
    plain_every: float = PLAIN_EVERY_S,
) -> None:
    """Run every step not already ``finished``, each once the steps it needs are done.

    ``jobs == 1``: in this process, in list order. ``jobs > 1``: up to ``jobs`` steps at
    once in spawned worker processes of ``threads`` torch threads, taking ready steps in
    list order (put the longest chain first), with live progress per lane
    (:mod:`spikebridge.demo_progress`: lines redrawn in place when ``tty``, default: stdout
    is a terminal; else a plain line per lane every ``plain_every`` seconds). The first
    failing step's error is raised once the running steps stop; its run folder, like any
    interrupted one, resumes on a re-run.
    """
    names = [s.name for s in steps]
    unknown = {a for s in steps for a in s.after} - set(names)
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"demo steps: unknown dependencies {sorted(unknown)} or repeated names")
    if jobs <= 1:
        plan = _Schedule(list(steps), finished, log)
        while plan.pending:
            plan.skip_finished()
            plan.refuse_cycle()
            if plan.pending:
                s = plan.ready()[0]
                plan.begin(s)
                s.make(*s.args, log=log)
                plan.end(s)
        return
    board = LaneBoard(log, sys.stdout.isatty() if tty is None else tty, plain_every)
    try:  # every line, the scheduler's too, is printed above the lanes' progress lines
        _run_in_workers(_Schedule(list(steps), finished, board.say), jobs, threads, board)
    finally:
        board.close()


def _run_in_workers(plan: _Schedule, jobs: int, threads: int, board: LaneBoard) -> None:
    """``run_steps`` with ``jobs`` worker processes; the main process prints every line and
    draws the lanes' progress while it waits."""
    context = multiprocessing.get_context("spawn")  # forking a process with torch threads is unsafe
    queue = context.SimpleQueue()  # workers -> main: log lines and training ticks
    with ProcessPoolExecutor(jobs, context, _worker_init, (threads, queue)) as pool:
        running: dict[Future, Step] = {}
        try:
            _schedule(plan, pool, running, board, queue, jobs)
        except KeyboardInterrupt:  # workers hit by the same Ctrl-C are gone at once; one that
            _stop_others(running, board, queue)  # was not ends its step, never blocked on
            raise  # a full queue


def _schedule(
    plan: _Schedule, pool: ProcessPoolExecutor, running: dict[Future, Step], board: LaneBoard,
    queue: SimpleQueue, jobs: int,
) -> None:  # fmt: skip
    """Submit ready steps while fewer than ``jobs`` run; every half second take the
    workers' messages, and end the steps that are over."""
    while plan.pending or running:
        plan.skip_finished()
        for s in plan.ready()[: jobs - len(running)]:
            plan.begin(s)
            board.start(s.name)
            running[pool.submit(run_reported, s.name, s.make, s.args)] = s
        if not running:
            plan.refuse_cycle()
            continue
        over, _ = wait(running, timeout=REDRAW_EVERY_S, return_when=FIRST_COMPLETED)
        board.drain(queue)  # a finished step's lines were all queued before its result
        for future in over:
            s = running.pop(future)
            board.stop(s.name)
            error = future.exception()
            if error is not None:
                _stop_others(running, board, queue)
                raise error
            plan.end(s, "done")


def _stop_others(running: dict[Future, Step], board: LaneBoard, queue: SimpleQueue) -> None:
    """After a failure or an interrupt: cancel the waiting steps and let the running ones
    end, still printing their lines (a worker would block on a full queue)."""
    for other in running:
        other.cancel()
    while not all(f.done() for f in running):
        wait(running, timeout=REDRAW_EVERY_S)
        board.drain(queue)


def default_jobs(threads: int) -> int:
    """2 worker processes where there are 2 threads or more to give them, else 1."""
    return 2 if threads >= 2 else 1


def _run_config(
    data: DataConfig, model: ModelConfig, epochs: int, out: Path, threads: int | None,
    progress: bool,
) -> Config:  # fmt: skip
    """One demo run's config: the demo's optimizer; resumed when the demo is run again (a
    demo killed mid-training continues the interrupted run)."""
    train = TrainConfig(epochs=epochs, threads=threads, progress=progress, resume=True,
                        out=str(out))  # fmt: skip
    return Config(data=data, model=model, optim=DEMO_OPTIM, train=train)


def demo_steps(out: Path, threads: int | None, progress: bool) -> list[Step]:
    """The demo's steps, the longest chain (teacher -> IDSNN student) first."""
    teacher_dir, qcfs_dir = out / "teacher", out / "qcfs-ann"
    qcfs_step = "conversion-aware ANN (QCFS, pre-add)"
    lane = {"threads": threads, "progress": progress}
    teacher = _run_config(TEACHER_DATA, TEACHER, TEACHER_EPOCHS, teacher_dir, **lane)
    snn = _run_config(DEMO_DATA, STUDENT, STUDENT_EPOCHS, out / "snn-baseline", **lane)
    student = _run_config(DEMO_DATA, STUDENT, STUDENT_EPOCHS, out / "idsnn", **lane)
    kd = dataclasses.replace(STUDENT_KD, teacher=str(teacher_dir))
    qcfs = _run_config(DEMO_DATA, QCFS_ANN, QCFS_EPOCHS, qcfs_dir, **lane)
    steps = [
        Step("teacher ANN", teacher_dir, train_run, (teacher,)),
        Step("directly trained SNN", out / "snn-baseline", train_run, (snn,)),
        Step("IDSNN student", out / "idsnn", distill_run,
             (Config(**{s: getattr(student, s) for s in student.sections}, distill=kd),),
             after=("teacher ANN",)),
        Step(qcfs_step, qcfs_dir, train_run, (qcfs,)),
    ]  # fmt: skip
    for method in QCFS_METHODS:
        conv_dir = out / f"converted-{qcfs_dir.name}-{method}"
        steps.append(Step(f"QCFS ANN converted ({method})", conv_dir, _convert,
                          (qcfs_dir, method, conv_dir, CONVERT_TIMESTEPS, CALIBRATION_IMAGES,
                           CONVERT_TEST_IMAGES), after=(qcfs_step,)))  # fmt: skip
    return steps


def run_demo(
    out: str | Path | DemoConfig = "demo_runs",
    threads: int | None = None,
    log=print,
    jobs: int | None = None,
) -> dict:
    """Run (or reuse) every demo step under ``out``; returns the comparison rows.

    ``threads``: torch threads in all (default: torch's choice), shared by ``jobs`` worker
    processes (default: ``default_jobs``); ``jobs=1`` runs in this process, with progress bars.
    ``out`` may be a :class:`DemoConfig` holding all three (what ``spikebridge demo`` builds).
    """
    if isinstance(out, DemoConfig):
        out, threads, jobs = out.out, out.threads, out.jobs
    total = threads or torch.get_num_threads()
    jobs = default_jobs(total) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs is {jobs}; expected 1 or more worker processes.")
    per_job = max(1, total // jobs)
    # resume: a demo killed mid-training continues the interrupted run when re-run
    steps = demo_steps(Path(out), per_job if jobs > 1 else threads, progress=jobs == 1)
    # a folder holding files the demo did not write is refused, nothing in it touched
    out = prepare_output_folder(out, [*DEMO_OUTPUTS, *(s.run_dir.name for s in steps)])
    log(f"[demo] {len(steps)} steps, {jobs} at a time, {per_job} torch thread(s) each")
    run_steps(steps, jobs, log, per_job)
    summary = {s.name: read_json(s.run_dir / "summary.json") for s in steps}
    T = STUDENT.timesteps
    rows = [_row(f"teacher ANN ({TEACHER.name} x{TEACHER.width})", summary["teacher ANN"], 1)]
    rows += [_row("SNN trained directly", summary["directly trained SNN"], T),
             _row("IDSNN student", summary["IDSNN student"], T)]  # fmt: skip
    rows.append(_row(f"QCFS pre-add ANN ({QCFS_ANN.name} x{QCFS_ANN.width})",
                     summary["conversion-aware ANN (QCFS, pre-add)"], 1))  # fmt: skip
    converted = {}
    for method in QCFS_METHODS:
        key = f"QCFS ANN converted ({method})"
        converted[key] = summary[key]
        rows += [_row(key, converted[key], t) for t in (4, 8, 16)]
    result = {"rows": rows, "conversion_accuracy_by_timestep": {
        m: s.get("accuracy_by_timestep") for m, s in converted.items()}}  # fmt: skip
    table = format_table(rows)
    (out / "demo.md").write_text(table + "\n")
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    log("\n" + table)
    log(f"\n(energy: estimate, E_MAC=4.6 pJ, E_AC=0.9 pJ; test images: the teacher is "
        f"scored on the whole test file, the rest on a balanced sample; tables in "
        f"{out}/demo.md)")  # fmt: skip
    return result
