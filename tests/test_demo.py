"""The demo's comparison rows: accuracy at the row's T, operations only where measured."""

import time
from pathlib import Path

import pytest

from spikebridge.demo import Step, _row, format_table, run_demo, run_steps
from spikebridge.demo_progress import Lane, LaneBoard, duration
from spikebridge.engine import progress
from spikebridge.engine.progress import Tick
from spikebridge.errors import ConfigError

SNN = {
    "accuracy_by_timestep": {"1": 0.5, "4": 0.7, "8": 0.8},
    "measured_timesteps": 4, "firing_rate": 0.2, "sops_per_image": 2e6,
    "macs_per_image": 5e6, "energy_estimate_uj": 1.8, "ann_energy_estimate_uj": 23.0,
    "test_samples": 3200,
}  # fmt: skip
ANN = {"test_accuracy": 0.9, "macs_per_image": 5e6, "ann_energy_estimate_uj": 23.0}


def test_snn_rows_take_the_accuracy_at_their_t_and_operations_only_at_the_measured_t():
    at4, at8 = _row("snn", SNN, 4), _row("snn", SNN, 8)
    assert (at4["test_accuracy"], at8["test_accuracy"]) == (0.7, 0.8)
    assert (at4["sops_per_image"], at4["energy_uj"]) == (2e6, 1.8)
    assert at8["sops_per_image"] is None and at8["energy_uj"] is None


def test_rows_of_a_run_measured_per_t_take_the_figures_at_their_own_t():
    per_t = {**SNN, "sops_by_timestep": {"1": 0.4e6, "4": 2e6, "8": 4.1e6},
             "energy_by_timestep": {"1": 0.5, "4": 1.8, "8": 3.7},
             "firing_rate_by_timestep": {"1": 0.1, "4": 0.2, "8": 0.21}}  # fmt: skip
    rows = {t: _row("snn", per_t, t) for t in (1, 4, 8)}
    assert [rows[t]["sops_per_image"] for t in (1, 4, 8)] == [0.4e6, 2e6, 4.1e6]
    assert [rows[t]["energy_uj"] for t in (1, 4, 8)] == [0.5, 1.8, 3.7]
    assert [rows[t]["firing_rate"] for t in (1, 4, 8)] == [0.1, 0.2, 0.21]
    assert "| snn | 8 | 80.00 % | 3200 | 0.210 | 4.10 M |" in format_table([rows[8]])


def test_ann_rows_show_the_ann_energy_and_the_table_prints_percentages():
    row = _row("ann", ANN, 1)
    assert (row["T"], row["energy_uj"]) == ("-", 23.0)
    table = format_table([row, _row("snn", SNN, 4)])
    assert "| ann | - | 90.00 % | - |" in table
    assert "| snn | 4 | 70.00 % | 3200 | 0.200 | 2.00 M |" in table


# ---------------------------------------------------------------- the step scheduler


def _record(folder: Path, name: str, wait_for: str | None = None, log=print) -> None:
    """A demo step for the tests: marks its start, optionally waits (at most 60 s) for
    another step to have started, then marks its end. Module-level, so workers can run it."""
    (folder / f"{name}.start").write_text(str(time.monotonic()))
    deadline = time.monotonic() + 60
    while wait_for is not None and not (folder / f"{wait_for}.start").exists():
        if time.monotonic() > deadline:
            raise ConfigError(f"{name} never saw {wait_for} start")
        time.sleep(0.05)
    (folder / f"{name}.end").write_text(str(time.monotonic()))


def _fail(folder: Path, log=print) -> None:
    raise ConfigError("step failed on purpose")


def _finished_if_ended(run_dir: Path):
    return {} if run_dir.with_suffix(".end").exists() else None


def _steps(tmp_path: Path, waits: dict[str, str] | None = None) -> list[Step]:
    waits = waits or {}
    return [
        Step(n, tmp_path / n, _record, (tmp_path, n, waits.get(n)), after=after)
        for n, after in (("a", ()), ("b", ()), ("c", ("a",)), ("d", ("c", "b")))
    ]


def _time(tmp_path: Path, name: str, edge: str) -> float:
    return float((tmp_path / f"{name}.{edge}").read_text())


def test_steps_run_after_the_steps_they_need_and_finished_steps_are_reused(tmp_path):
    (tmp_path / "a.end").write_text("0")  # 'a' finished in an earlier demo
    lines = []
    run_steps(_steps(tmp_path), jobs=1, log=lines.append, finished=_finished_if_ended)
    assert not (tmp_path / "a.start").exists() and any("a: reusing" in x for x in lines)
    assert _time(tmp_path, "c", "start") >= _time(tmp_path, "a", "end")
    assert _time(tmp_path, "d", "start") >= max(_time(tmp_path, n, "end") for n in "bc")


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_finished_chain_is_reused_whole_and_never_started_again(tmp_path, jobs):
    # 'a' and 'c' (which needs 'a') finished in an earlier demo: a re-run starts neither
    for name in "ac":
        (tmp_path / f"{name}.end").write_text("0")
    steps = [_steps(tmp_path)[i] for i in (0, 2, 1, 3)]  # c listed before b
    run_steps(steps, jobs=jobs, log=lambda _: None, finished=_finished_if_ended)
    assert not (tmp_path / "a.start").exists() and not (tmp_path / "c.start").exists()
    assert (tmp_path / "d.end").exists()


def test_two_jobs_run_independent_steps_at_once_and_keep_the_order_of_dependencies(tmp_path):
    # 'a' waits for 'b' to start: one process at a time would fail it (after 60 s)
    run_steps(_steps(tmp_path, {"a": "b"}), jobs=2, log=lambda _: None,
              finished=_finished_if_ended)  # fmt: skip
    assert _time(tmp_path, "c", "start") >= _time(tmp_path, "a", "end")
    assert _time(tmp_path, "d", "start") >= max(_time(tmp_path, n, "end") for n in "bc")


def test_a_failing_step_stops_the_demo_with_its_error_and_its_dependents_never_run(tmp_path):
    steps = [Step("bad", tmp_path / "bad", _fail, (tmp_path,)), *_steps(tmp_path)[1:3]]
    steps[2] = Step("c", tmp_path / "c", _record, (tmp_path, "c"), after=("bad",))
    with pytest.raises(ConfigError, match="on purpose"):
        run_steps(steps, jobs=2, log=lambda _: None, finished=_finished_if_ended)
    assert not (tmp_path / "c.start").exists()


def test_unknown_dependencies_cycles_and_bad_job_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_steps([Step("x", tmp_path, _fail, (tmp_path,), after=("y",))])
    cycle = [Step("x", tmp_path / "x", _fail, (tmp_path,), after=("y",)),
             Step("y", tmp_path / "y", _fail, (tmp_path,), after=("x",))]  # fmt: skip
    for jobs in (1, 2):
        with pytest.raises(ValueError, match="wait on each other"):
            run_steps(cycle, jobs=jobs, log=lambda _: None, finished=_finished_if_ended)
    with pytest.raises(ConfigError, match="--jobs is 0"):
        run_demo(tmp_path, jobs=0)


# ---------------------------------------------------------------- live progress of the lanes


def _train_like(name: str, batches: int = 20, log=print) -> None:
    """A demo step that trains like ``fit`` reports it: a tick per batch (0.1 s each), and
    the epoch line only at the end. Module-level, so workers can run it."""
    for i in range(1, batches + 1):
        progress.report(1, 1, i, batches)
        time.sleep(0.1)
    log(f"epoch 1/1  loss 1.0 ({name})")


def test_both_lanes_show_progress_before_their_first_epoch_line(tmp_path):
    steps = [Step(n, tmp_path / n, _train_like, (n,)) for n in ("a", "b")]
    lines: list[str] = []
    run_steps(steps, jobs=2, log=lines.append, finished=lambda _: None, tty=False,
              plain_every=0.2)  # fmt: skip
    for name in ("a", "b"):
        epoch_line = lines.index(f"[{name}] epoch 1/1  loss 1.0 ({name})")
        ticks = [i for i, x in enumerate(lines) if x.startswith(f"[progress] {name}: ")
                 and "batch" in x and "ETA" in x]  # fmt: skip
        assert ticks and ticks[0] < epoch_line, lines
        assert lines.index(next(x for x in lines if x.endswith(f"{name}: done"))) > epoch_line


def test_a_terminal_gets_one_line_per_lane_redrawn_in_place(capsys):
    said: list[str] = []
    board = LaneBoard(said.append, tty=True)
    board.start("teacher ANN")
    board.start("SNN")
    board.lanes["SNN"].update(Tick(1, 4, 50, 250), time.monotonic())
    board.redraw(force=True)
    drawn = capsys.readouterr().out.splitlines()
    assert (
        len(drawn) == 2
        and drawn[0].startswith("teacher ANN: ")
        and "no training batch yet" in drawn[0]
    )
    assert drawn[1].startswith("SNN: ") and "epoch 1/4, batch 50/250 (5 % of training)" in drawn[1]
    board.say("[SNN] epoch 1/4 ...")  # a line above the lanes: erase both, print, redraw
    out = capsys.readouterr().out
    assert out.startswith("\x1b[F\x1b[K" * 2) and out.count("\n") == 2
    assert said == ["[SNN] epoch 1/4 ..."]
    board.close()
    assert capsys.readouterr().out == "\x1b[F\x1b[K" * 2


def test_the_eta_extrapolates_the_ticks_seen():
    lane = Lane("x", started=0.0)
    assert lane.eta() is None
    lane.update(Tick(1, 2, 10, 100), now=100.0)  # 5 % at 100 s
    lane.update(Tick(2, 2, 10, 100), now=200.0)  # 55 %: 50 points in 100 s
    assert lane.eta() == pytest.approx(90.0)  # 45 points left
    assert "ETA 1m30s" in lane.line(now=230.0) and "3m50s in" in lane.line(now=230.0)
    assert [duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


def test_demo_refuses_a_folder_of_foreign_files_and_leaves_it_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"mine\n")
    (tmp_path / "demo.md").write_bytes(b"my own table\n")
    with pytest.raises(ConfigError, match="did not write"):
        run_demo(tmp_path, jobs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.md", "notes.txt"]
    assert (tmp_path / "demo.md").read_bytes() == b"my own table\n"


def test_demo_steps_are_typed_configs_with_the_recorded_settings(tmp_path):
    """The demo builds the objects `spikebridge train` / `distill` build from options; its
    settings are those its figures in docs/RESULTS.md were recorded with (so finished steps
    are reused and the table reproduces)."""
    from spikebridge.config import TRAIN_SECTIONS, Config, load_config
    from spikebridge.demo import demo_steps
    from spikebridge.runs.idsnn import DISTILL_SECTIONS, STUDENT_DEFAULTS

    data = {"dataset": "fashion-mnist", "subset": 16000, "val_size": 3000, "batch_size": 64,
            "augment": False, "lr": 0.1, "grad_clip": None, "threads": 1, "progress": False,
            "resume": True}  # fmt: skip
    student = {**data, "model": "resnet20", "width": 0.5, "neuron": "lif", "timesteps": 4,
               "epochs": 4}  # fmt: skip
    recorded = {
        "teacher": {**data, "subset": None, "model": "resnet32", "width": 0.5, "epochs": 2},
        "snn-baseline": student,
        "qcfs-ann": {**data, "model": "resnet20", "width": 0.5, "epochs": 3,
                     "activation": "qcfs", "qcfs_levels": 4, "block": "pre-add",
                     "threshold": 2.0, "zero_init_residual": False},
    }  # fmt: skip
    steps = {s.run_dir.name: s for s in demo_steps(tmp_path, 1, False)}
    for name, values in recorded.items():
        config = steps[name].args[0]
        assert isinstance(config, Config)
        expected = load_config(TRAIN_SECTIONS, overrides={**values, "out": str(tmp_path / name)})
        assert config == expected, name
    kd = {**student, "teacher": str(tmp_path / "teacher"), "init": "first", "kd_weight": 0.3,
          "out": str(tmp_path / "idsnn")}  # fmt: skip
    expected = load_config(DISTILL_SECTIONS, base=STUDENT_DEFAULTS, overrides=kd)
    assert steps["idsnn"].args[0] == expected
