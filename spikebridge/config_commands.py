"""The config sections of the commands that read runs or run a plan: eval, report, export,
compare, analyze, experiment, demo (training's sections: :mod:`spikebridge.config`; distill
and idsnn: :mod:`spikebridge.runs.idsnn`; convert: its own).

The command line (``spikebridge eval RUN --timesteps 4``), a YAML file (``--config``) and
Python (``EvalConfig(timesteps=4)``, or ``load_config(("eval",), overrides=...)``) build the
same objects. The grammar they share: ``--timesteps`` is the T a spiking model runs at,
``--report-at`` the t's printed, ``--test-images`` the first N test images.
"""

from __future__ import annotations

from dataclasses import dataclass

from spikebridge.config import DEFAULT_RUNS_DIR, DEVICES_HELP
from spikebridge.config_core import check_count, option, register_section
from spikebridge.errors import ConfigError

REPORT_AT_HELP = "report only these t, e.g. 1,2,4,8 (one simulation at the largest t)"


def check_report_at(report_at: tuple[int, ...] | None, timesteps: int | None = None) -> None:
    """ConfigError unless every t of ``report_at`` is >= 1 (and <= ``timesteps`` if given)."""
    if report_at is None:
        return
    if not report_at or min(report_at) < 1:
        raise ConfigError(f"--report-at is {list(report_at)}; expected time-steps t >= 1.")
    if timesteps is not None and max(report_at) > timesteps:
        raise ConfigError(
            f"--report-at asks for t = {max(report_at)} but --timesteps is {timesteps}; "
            "expected every t <= T (or leave --timesteps out)."
        )


@register_section("eval", standalone=True)
@dataclass
class EvalConfig:
    """What ``spikebridge eval RUN`` measures (METHODS 3: all t from one causal pass)."""

    timesteps: int | None = option(
        None, "T the spiking model runs at; accuracy is reported at every t <= T; none = the "
        "model's T (an ANN takes none)", metavar="T",
    )  # fmt: skip
    report_at: tuple[int, ...] | None = option(
        None, f"{REPORT_AT_HELP}; none = every t <= T", metavar="T,T,..."
    )
    split: str = option("test", "which split to evaluate", ("test", "val"))
    data_dir: str | None = option(None, "dataset folder, if it moved; none = the run's")
    device: str = option("auto", DEVICES_HELP)
    batch_size: int | None = option(None, "evaluation batch size; none = the run's")

    def __post_init__(self) -> None:
        check_count("--timesteps", self.timesteps)
        check_report_at(self.report_at, self.timesteps)

    def requested(self) -> int | list[int] | None:
        """What :func:`~spikebridge.runs.evaluate.eval_run` takes: the t's to report, or a T."""
        return sorted(set(self.report_at)) if self.report_at else self.timesteps


@register_section("report", standalone=True)
@dataclass
class ReportConfig:
    """``spikebridge report RUN`` has no settings yet: everything comes from the run folder
    (the section exists so that ``--config`` is read, and refused keys named, as elsewhere)."""


@register_section("export", standalone=True)
@dataclass
class ExportConfig:
    """Where and how ``spikebridge export RUN`` writes a spiking run's model."""

    format: str = option("nir", "output format (nir: the Neuromorphic Intermediate Representation)")
    output: str | None = option(None, "output file; none = RUN/model.<format>", flags=("-o",))
    nir_target: str = option(
        "portable", "NIR graph form: portable (SpikingJelly 2.0 and snnTorch 1.0 import it as "
        "shipped) or compact (one node per neuron layer, extras in node metadata)",
        ("portable", "compact"),
    )  # fmt: skip


@register_section("compare", standalone=True)
@dataclass
class CompareConfig:
    """How ``spikebridge compare A B`` scores both runs on the same test images."""

    report_at: tuple[int, ...] | None = option(
        None, f"{REPORT_AT_HELP}; none = every t up to the larger model's T", metavar="T,T,..."
    )
    test_images: int | None = option(
        None, "score the first N test images only; none = all", metavar="N"
    )
    whole_test_set: bool = option(
        False, "score every image of the dataset's test file, not the runs' test split (a run "
        "trained with --subset keeps a sample of it)",
    )  # fmt: skip
    json: str | None = option(None, "also write the rows to this JSON file")
    device: str = option("auto", DEVICES_HELP)
    batch_size: int | None = option(None, "evaluation batch size; none = the run's")
    data_dir: str | None = option(None, "dataset folder, if it moved; none = the run's")

    def __post_init__(self) -> None:
        check_report_at(self.report_at)


@register_section("analyze", standalone=True)
@dataclass
class AnalyzeConfig:
    """The per-layer conversion error decomposition of ``spikebridge analyze RUN``."""

    timesteps: int | None = option(
        None, "T the converted network runs at while its error is measured; none = the "
        "run's tuning T, else 4", metavar="T",
    )  # fmt: skip
    calibration_images: int = option(
        256, "training images (never test images) run through the ANN and the converted "
        "network to measure each layer's error", metavar="N",
    )  # fmt: skip
    method: str | None = option(
        None, "convert an ANN run in memory with this method first (maxnorm, robust, qcfs, "
        "ttrbr); none = RUN is a converted run",
    )  # fmt: skip
    calibration_size: int | None = option(
        None, "with --method: training images that calibrate the conversion; none = "
        "convert's default", metavar="N",
    )  # fmt: skip
    out: str | None = option(
        None, "output folder; none = the converted run's folder, or RUN/analysis-<method>-t<T> "
        "for an ANN run",
    )  # fmt: skip
    device: str = option("auto", DEVICES_HELP)


@register_section("experiment", flat_names={"overrides": "set"}, standalone=True)
@dataclass
class ExperimentConfig:
    """Which profile of an experiment file runs, where, with which settings changed."""

    profile: str = option("cpu", "profile of the file to run: cpu (2 cores) or full (GPU)")
    out: str | None = option(
        None, f"output folder; none = {DEFAULT_RUNS_DIR}/experiments/<file>-<profile>"
    )
    overrides: tuple[str, ...] = option(
        (), "override a setting of the file after the profile, value read as YAML; "
        "dots reach nested keys (e.g. --set train.epochs=2 --set models=[resnet20]); "
        "repeatable", metavar="KEY=VALUE", repeatable=True,
    )  # fmt: skip


@register_section("demo", standalone=True)
@dataclass
class DemoConfig:
    """Where the demo writes its runs and how many CPU threads and processes it uses."""

    out: str = option("demo_runs", "folder of the demo's runs (finished steps are reused)")
    threads: int | None = option(None, "torch threads in all; none = torch's choice")
    jobs: int | None = option(
        None, "steps run side by side in worker processes, sharing the threads; none = 2 "
        "when there are 2 threads or more; 1 = one process, with progress bars",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_count("--threads", self.threads)
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs is {self.jobs}; expected 1 or more worker processes.")
