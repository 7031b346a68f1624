"""``convert_run`` / ``analyze_run`` and the ``convert`` / ``analyze`` subcommands, end to end
on a tiny synthetic ANN run (resnet20 at width 0.25, 16x16 images)."""

import dataclasses
import json
import math

import pytest
import torch
from conversion_helpers import convert_by_name

from spikebridge.cli import main
from spikebridge.config import TRAIN_SECTIONS, load_config
from spikebridge.data import loader
from spikebridge.engine import load_run
from spikebridge.engine.evaluate import evaluate
from spikebridge.errors import ConfigError
from spikebridge.runs import train_run
from spikebridge.runs.compare import compare_runs
from spikebridge.runs.conversion import (
    calibration_images,
    convert_run,
    eval_loader,
    format_accuracy_table,
    run_data,
    selection_images,
    selection_warning,
)
from spikebridge.runs.conversion_config import default_tune_at

TINY = {
    "dataset": "synthetic", "subset": 64, "val_size": 16, "batch_size": 16, "model": "resnet20",
    "width": 0.25, "epochs": 1, "lr": 0.1, "schedule": "cosine", "progress": False,
    "device": "cpu",
}  # fmt: skip


def quiet(_line):
    pass


def run(ann_run, method, report_at, log=quiet, **options):
    """``convert_run`` of ``ann_run`` with ``method``, reporting ``report_at``, on the CPU."""
    config = {"ann_run": ann_run, "method": method, "report_at": report_at, "device": "cpu"}
    return convert_run({**config, **options}, log=log)


@pytest.fixture(scope="module")
def ann_runs(tmp_path_factory):
    """A relu and a qcfs ANN run folder (1 epoch each)."""
    root = tmp_path_factory.mktemp("anns")
    runs = {}
    for act in ("relu", "qcfs"):
        cfg = load_config(TRAIN_SECTIONS, overrides={**TINY, "activation": act,
                                                     "block": "pre-add", "out": str(root / act)})  # fmt: skip
        train_run(cfg, log=quiet)
        runs[act] = root / act
    return runs


def test_convert_cli_writes_a_summary_with_every_t_up_to_the_largest(ann_runs, tmp_path, capsys):
    out = tmp_path / "conv"
    argv = ["convert", str(ann_runs["relu"]), "--method", "robust", "--report-at", "1,2,5",
            "--calibration-size", "24", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "robust" and summary["report_at"] == [1, 2, 5]
    assert summary["timesteps"] == 5 and load_run(out)[0].timesteps == 5
    assert list(summary["accuracy_by_timestep"]) == ["1", "2", "3", "4", "5"]
    assert 0.0 <= summary["ann_accuracy"] <= 1.0
    assert 0.0 <= summary["firing_rate"] <= 1.0 and summary["sops_per_image"] > 0
    assert summary["measured_timesteps"] == 5  # robust: measured at the deployment T
    # firing, SOPs and energy at every t <= 5 from the same pass, the headline at its T
    for key in ("sops_by_timestep", "energy_by_timestep", "firing_rate_by_timestep"):
        assert list(summary[key]) == ["1", "2", "3", "4", "5"], key
    assert summary["sops_by_timestep"]["5"] == summary["sops_per_image"]
    sops = [summary["sops_by_timestep"][t] for t in ("1", "2", "5")]
    assert sops == sorted(sops)  # cumulative counts: more steps, more operations
    assert (out / "conversion.md").read_text().startswith("# Conversion of")
    printed = capsys.readouterr().out
    assert "T=5" in printed and "T=3" not in printed  # the table shows the requested T only
    ops_row = next(line for line in printed.splitlines() if line.startswith("ops M"))
    assert ops_row.split()[-1] == f"{summary['sops_by_timestep']['5'] * 1e-6:.3g}"


def test_converted_run_reloads_and_gives_the_same_outputs(ann_runs, tmp_path):
    out = tmp_path / "conv"
    summary = run(ann_runs["relu"], "ttrbr", [1, 4], calibration_size=16, out=out,
                          device="cpu", log=quiet, tune_reference="ann")  # fmt: skip
    assert summary["tune_timesteps"] == 4
    snn, config = load_run(out)
    assert snn.spiking and snn.timesteps == 4 and config["conversion"]["method"] == "ttrbr"
    ann, ann_config = load_run(ann_runs["relu"])
    splits, data, seed = run_data(ann_config)
    fresh = convert_by_name(
        ann, "ttrbr", calibration_images(splits, 16, seed, torch.device("cpu")), 4
    )
    x = calibration_images(splits, 6, seed + 3, torch.device("cpu"))[0]
    torch.testing.assert_close(
        snn.forward_steps(x), fresh.set_timesteps(4) or fresh.forward_steps(x)
    )
    again = evaluate(snn, eval_loader(splits, data, seed, torch.device("cpu"), None))
    assert again["accuracy_by_timestep"] == summary["accuracy_by_timestep"]


def test_analyze_writes_the_error_tables_and_plot(ann_runs, tmp_path, capsys):
    out = tmp_path / "conv"
    run(ann_runs["qcfs"], "qcfs", [1, 2], out=out)
    assert main(["analyze", str(out), "--images", "8", "--timesteps", "3", "--device", "cpu"]) == 0
    for name in ("errors.md", "errors.csv", "errors.png"):
        assert (out / name).stat().st_size > 0
    lines = (out / "errors.csv").read_text().splitlines()
    assert lines[0].startswith("site,theta,quantization,deviation,propagated")
    assert len(lines) - 1 == 21  # resnet20 pre-add: 19 sites + 2 projection-shortcut neurons
    assert "| act1 |" in capsys.readouterr().out


def test_analyze_an_ann_run_with_a_method_converts_it_in_memory(ann_runs):
    argv = ["analyze", str(ann_runs["relu"]), "--method", "maxnorm", "--images", "4",
            "--calibration-size", "8", "--timesteps", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert (ann_runs["relu"] / "analysis-maxnorm-t2" / "errors.csv").is_file()


@pytest.mark.parametrize(
    "argv_tail",
    [
        ["convert", "--method", "bogus"],
        ["convert", "--method", "qcfs"],  # a relu ANN has no λ to convert with
        ["convert", "--method", "robust", "--report-at", "0,2"],
        ["convert", "--method", "robust", "--report-at", "1,8", "--timesteps", "4"],
        ["convert", "--method", "qcfs", "--tune-epochs", "2"],  # an option of ttrbr only
        ["convert", "--method", "ttrbr", "--tune-phi"],  # removed
        ["analyze"],  # an ANN run without --method
    ],
)
def test_bad_input_exits_with_code_2(ann_runs, tmp_path, argv_tail, capsys):
    cmd, *rest = argv_tail
    run = str(ann_runs["relu"])  # noqa: F811 (the helper is not used here)
    argv = [cmd, run, *rest]
    assert main([*argv, "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_default_tune_at_is_the_smallest_t_at_least_4():
    assert default_tune_at([1, 2, 4, 8, 32]) == 4
    assert default_tune_at([16, 8]) == 8
    assert default_tune_at([1, 2]) == 2


def test_accuracy_table_reference_text():
    summary = {"method": "qcfs", "ann_accuracy": 0.9, "timesteps": 3, "report_at": [1, 3],
               "accuracy_by_timestep": {"1": 0.5, "2": 0.6, "3": 0.875}}  # fmt: skip
    expected = ["method       ANN     T=1     T=3", "qcfs      90.00%  50.00%  87.50%"]
    assert format_accuracy_table(summary).splitlines() == expected
    old = {**summary, "timesteps": [1, 3]}  # a folder made before report_at was recorded
    del old["report_at"]
    assert format_accuracy_table(old).splitlines() == expected


def test_auto_records_the_reference_it_resolved(ann_runs, tmp_path):
    # The tiny QCFS ANN has L = 8 levels: "auto" aims at its clip twin only for T > 8 and at
    # the ANN as trained below that.
    argv = ["convert", str(ann_runs["qcfs"]), "--method", "ttrbr", "--report-at", "9",
            "--calibration-size", "16", "--out", str(tmp_path / "c"), "--device", "cpu",
            "--test-images", "8", "--tune-reference", "auto", "--tune-epochs", "0"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["tune_reference"] == "clip" and "reference_selection" not in summary
    low = run(ann_runs["qcfs"], "ttrbr", [2], calibration_size=16, out=tmp_path / "l",
                      device="cpu", log=quiet, test_images=8, tune_reference="auto",
                      tune_epochs=0)  # fmt: skip
    assert low["tune_reference"] == "ann"
    summary = run(ann_runs["qcfs"], "robust", [2], calibration_size=16,
                          out=tmp_path / "r")  # fmt: skip
    assert "tune_reference" not in summary  # not an option of robust


def test_convert_records_the_output_calibration_it_ran(ann_runs, tmp_path):
    argv = ["convert", str(ann_runs["qcfs"]), "--method", "ttrbr", "--report-at", "2",
            "--calibration-size", "16", "--out", str(tmp_path / "c"), "--device", "cpu",
            "--test-images", "8", "--tune-epochs", "2", "--tune-lr", "0.02"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert (summary["tune_epochs"], summary["tune_lr"]) == (2, 0.02)
    assert summary["output_calibration"]["lr"] == 0.02 and "tune_schedule" not in summary
    calibration = summary["output_calibration"]
    assert (calibration["fit_images"], calibration["holdout_images"]) == (12, 4)
    assert len(calibration["holdout_loss"]) == 3
    assert "## Output calibration at T = 2" in (tmp_path / "c" / "conversion.md").read_text()
    off = run(ann_runs["qcfs"], "ttrbr", [2], calibration_size=16, out=tmp_path / "o",
                      device="cpu", log=quiet, test_images=8, tune_epochs=0)  # fmt: skip
    assert off["tune_epochs"] == 0 and off["tune_lr"] is None
    assert "output_calibration" not in off
    default = run(ann_runs["qcfs"], "ttrbr", [2], calibration_size=16, out=tmp_path / "d",
                          device="cpu", log=quiet, test_images=8)  # fmt: skip
    assert (default["tune_epochs"], default["tune_lr"]) == (6, 0.01)


def test_compare_scores_both_runs_on_the_same_images(ann_runs, tmp_path, capsys):
    conv = tmp_path / "conv"
    run(ann_runs["qcfs"], "qcfs", [1, 3], out=conv)
    out = tmp_path / "cmp.json"
    argv = ["compare", str(ann_runs["qcfs"]), str(conv), "--timesteps", "1,3", "--json",
            str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    summary = json.loads((conv / "summary.json").read_text())
    for row in result["rows"]:  # the same accuracies convert_run measured, now paired
        assert math.isclose(row["acc_b"], summary["accuracy_by_timestep"][str(row["t"])])
        assert math.isclose(row["acc_a"], summary["ann_accuracy"])
    ops = result["operations"]
    for t in ("1", "3"):  # B's operations at each t: the ones convert_run measured at that t
        assert ops["b"][t]["ops_per_image"] == pytest.approx(summary["sops_by_timestep"][t])
        assert ops["b"][t]["energy_uj"] == pytest.approx(summary["energy_by_timestep"][t])
        assert ops["a"][t]["ops"] == "MACs"  # A is the ANN: the same MACs at every t
        assert ops["a"][t]["ops_per_image"] == summary["macs_per_image"]
    printed = capsys.readouterr().out
    assert "McNemar p" in printed and "B ops M" in printed
    # A run against itself: no disagreement, p = 1.
    assert main(["compare", str(conv), str(conv), "--json", str(out), "--device", "cpu"]) == 0
    assert all(r["a_only"] == r["b_only"] == 0 and r["p_value"] == 1.0
               for r in json.loads(out.read_text())["rows"])  # fmt: skip


def test_compare_scores_several_runs_against_one_baseline(ann_runs, tmp_path):
    convs = [tmp_path / m for m in ("qcfs", "robust")]
    for method, out in zip(("qcfs", "robust"), convs, strict=True):
        run(ann_runs["qcfs"], method, [2], calibration_size=16, out=out,
                    log=quiet)  # fmt: skip
    out = tmp_path / "cmp.json"
    argv = ["compare", str(ann_runs["qcfs"]), *map(str, convs), "--json", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert [r["run_b"] for r in results] == list(map(str, convs))
    for r, conv in zip(results, convs, strict=True):  # each B scored as it was when converted
        summary = json.loads((conv / "summary.json").read_text())
        assert [row["t"] for row in r["rows"]] == [1, 2]
        assert math.isclose(r["rows"][1]["acc_b"], summary["accuracy_by_timestep"]["2"])
        assert math.isclose(r["rows"][0]["acc_a"], summary["ann_accuracy"])


def test_compare_refuses_runs_on_different_test_splits(ann_runs, tmp_path):
    other = tmp_path / "other"
    cfg = load_config(TRAIN_SECTIONS, overrides={**TINY, "subset": 48, "out": str(other)})
    train_run(cfg, log=quiet)
    with pytest.raises(ConfigError, match="test split"):
        compare_runs(ann_runs["relu"], other, device="cpu")
    # Different subsets, same test file: comparable on the whole of it.
    result = compare_runs(ann_runs["relu"], other, [1], device="cpu", whole_test_set=True)
    assert result["test_images"] == 256  # every image of the synthetic test file


def test_compare_whole_test_set_scores_every_image_of_the_test_file(ann_runs, monkeypatch):
    monkeypatch.setattr(loader, "MIN_TEST_SUBSET", 10)  # subset 64 -> a 12-image test split
    run = ann_runs["relu"]
    split = compare_runs(run, run, [1], device="cpu")
    whole = compare_runs(run, run, [1], device="cpu", whole_test_set=True)
    assert (split["test_images"], whole["test_images"]) == (12, 256)
    assert main(["compare", str(run), str(run), "--whole-test-set", "--device", "cpu"]) == 0


def test_convert_selects_the_reference_on_the_validation_split_by_default(ann_runs, tmp_path):
    argv = ["convert", str(ann_runs["qcfs"]), "--method", "ttrbr", "--report-at", "3",
            "--calibration-size", "16", "--out", str(tmp_path / "s"), "--device", "cpu",
            "--test-images", "8", "--tune-epochs", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    selection = summary["reference_selection"]
    assert selection["source"] == "validation split" and selection["images"] == 16
    assert set(selection["accuracy"]) == {"ann", "clip", "qcfs", "robust"}
    assert selection["timesteps"] == 3 and selection["untuned"] == ["qcfs", "robust"]
    assert summary["tune_reference"] == selection["chosen"]
    assert max(selection["accuracy"].values()) == selection["accuracy"][selection["chosen"]]
    assert "Tuning reference, chosen at T = 3" in (tmp_path / "s" / "conversion.md").read_text()


def test_ttrbr_is_held_to_the_best_untuned_method_at_every_reported_t(ann_runs, tmp_path):
    # issue 23: thresholds tuned at T = 4 may fall below qcfs / robust at T = 8, 16; the kept
    # ones are chosen over every reported T, and a T where they trail is said in one line
    lines = []
    summary = run(ann_runs["qcfs"], "ttrbr", [1, 2, 4, 8], calibration_size=16,
                          out=tmp_path / "r", log=lines.append,
                          test_images=8, tune_epochs=0)  # fmt: skip
    selection = summary["reference_selection"]
    by_t = selection["accuracy_by_timestep"]
    assert set(by_t) == {"ann", "clip", "qcfs", "robust"}
    assert all(set(row) == {"1", "2", "4", "8"} for row in by_t.values())
    kept = by_t[selection["chosen"]]
    bar = {t: max(by_t[u][t] for u in selection["untuned"]) for t in kept}
    if all(row[t] >= bar[t] for row in by_t.values() for t in row):  # all hold: best at 4
        assert kept == max(by_t.values(), key=lambda row: row["4"])
    trails = {t: c for t in kept for c in by_t if by_t[c][t] > kept[t]}
    assert set(selection["trails"]) == set(trails)
    assert (selection_warning(summary) in lines) == bool(trails)
    assert summary["tune_reference"] == selection["chosen"]


def test_selection_warning_names_the_t_where_the_kept_thresholds_trail():
    summary = {"reference_selection": {"trails": {"16": "qcfs", "8": "robust"}}}
    line = selection_warning(summary)
    assert line is not None and "T = 8 (robust), T = 16 (qcfs)" in line
    assert selection_warning({"reference_selection": {"trails": {}}}) is None
    assert selection_warning({}) is None


def test_selection_images_are_the_validation_split_else_outside_the_calibration_draw(ann_runs):
    _, config = load_run(ann_runs["qcfs"], "cpu")
    splits, _, seed = run_data(config)
    cpu = torch.device("cpu")
    batches, source = selection_images(splits, 10, seed, cpu, calibration_size=16)
    assert source == "validation split"
    assert torch.equal(torch.cat([y for _, y in batches]), splits.val_y[:10])
    no_val = dataclasses.replace(splits, val_x=splits.val_x[:0], val_y=splits.val_y[:0])
    batches, source = selection_images(no_val, 20, seed, cpu, calibration_size=16)
    assert source == "training images outside the calibration draw"
    held = torch.cat([x for x, _ in batches])
    calib = torch.cat(calibration_images(no_val, len(splits.train_y) - 20, seed, cpu))
    assert held.shape[0] == 20
    # disjoint from the largest calibration draw that fits: no held-out image is in it
    assert not any(torch.equal(h, c) for h in held for c in calib)
    with pytest.raises(ConfigError, match="selection"):
        selection_images(no_val, 20, seed, cpu, calibration_size=len(splits.train_y) - 19)


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize(
    ("old", "new", "notice"),
    [
        (["--ann", "{run}"], ["{run}"], "--ann is deprecated; pass the run positionally"),
        (["{run}", "--timesteps", "1,3"], ["{run}", "--report-at", "1,3"],
         "--timesteps with a list is deprecated; use --report-at 1,3"),
        (["{run}", "--report-at", "2,4", "--tune-timesteps", "2"],
         ["{run}", "--report-at", "2,4", "--tune-at", "2"],
         "--tune-timesteps is deprecated; use --tune-at 2"),
        (["{run}", "--report-at", "2", "--tune-schedule", "cosine"], ["{run}", "--report-at", "2"],
         "--tune-schedule is deprecated"),
    ],
)  # fmt: skip
def test_old_spellings_work_with_a_one_line_notice(ann_runs, tmp_path, capsys, old, new, notice):
    common = ["--method", "ttrbr", "--calibration-size", "16", "--test-images", "8",
              "--tune-epochs", "1", "--tune-reference", "ann", "--device", "cpu"]  # fmt: skip
    folders = {}
    for name, argv in (("old", old), ("new", new)):
        argv = [a.format(run=ann_runs["qcfs"]) for a in argv]
        assert main(["convert", *argv, *common, "--out", str(tmp_path / name)]) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        if name == "old":  # one line, naming the new spelling
            assert len(warnings) == 1 and warnings[0].startswith(f"warning: {notice}")
        else:
            assert warnings == []
        folders[name] = _summary(tmp_path / name)
    for key in ("accuracy_by_timestep", "report_at", "timesteps", "tune_timesteps"):
        assert folders["old"][key] == folders["new"][key], key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tune-phi"], "--tune-phi was removed"),
        (["--tune-schedule", "constant"], "--tune-schedule constant was removed"),
    ],
)
def test_removed_options_are_refused_in_one_sentence(ann_runs, capsys, argv, message):
    code = main(["convert", str(ann_runs["qcfs"]), "--method", "ttrbr", *argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_config_file_sets_the_run_and_the_command_line_wins(ann_runs, tmp_path, capsys):
    config = tmp_path / "convert.yaml"
    config.write_text(
        f"ann_run: {ann_runs['qcfs']}\nmethod: ttrbr\nreport_at: [1, 2]\ncalibration_size: 16\n"
        "test_images: 8\ntune_epochs: 0\ntune_reference: ann\ndevice: cpu\n"
    )
    out = tmp_path / "c"
    assert main(["convert", "--config", str(config), "--report-at", "3", "--out", str(out)]) == 0
    summary = _summary(out)
    assert summary["report_at"] == [3] and summary["tune_epochs"] == 0
    assert summary["method"] == "ttrbr" and summary["tune_timesteps"] == 3
    config.write_text("method: ttrbr\ntune_epoch: 2\n")
    assert main(["convert", str(ann_runs["qcfs"]), "--config", str(config)]) == 2
    assert "unknown config key 'tune_epoch'; did you mean 'tune_epochs'?" in capsys.readouterr().err


def test_phi_and_the_saved_t_are_reachable(ann_runs, tmp_path):
    summary = run(ann_runs["qcfs"], "qcfs", [1, 2], timesteps=6, phi=0.25, out=tmp_path / "p")
    snn, config = load_run(tmp_path / "p")
    assert snn.timesteps == 6 and list(summary["accuracy_by_timestep"]) == list("123456")
    assert summary["phi"] == 0.25 and snn.act1.neuron.phi.item() == 0.25
    assert config["conversion"]["report_at"] == [1, 2]


def test_flags_take_the_x_and_no_x_forms_and_help_says_what_each_t_means(capsys):
    import argparse

    from spikebridge.cli.convert import add_arguments as add_convert_arguments
    from spikebridge.config import config_from_args

    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    args = parser.parse_args(["RUN", "--method", "ttrbr", "--no-tune-guard", "--compensate-stream"])
    config = config_from_args(args, ("convert",)).convert
    assert (config.tune_guard, config.compensate_stream, config.tune_bias) == (False, True, None)
    text = parser.format_help()
    for words in ("T, the number of time-steps the saved spiking model", "t's to print and record",
                  "tunes its thresholds at", "ttrbr on"):  # fmt: skip
        assert words in " ".join(text.split()), words
