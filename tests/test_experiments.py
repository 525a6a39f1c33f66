"""Experiments: spec validation, grid expansion and stable ids, resumable runs, statistics, reports, tracking."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvr.cli.main import main as cvr_main
from cvr.config import ConfigError
from cvr.experiments.grid import expand_trials, nest_dotted
from cvr.experiments.report import result_row, write_report_files
from cvr.experiments.runner import DONE_MARKER, base_config, run_experiment, trial_config
from cvr.experiments.spec import experiment_from_dict, load_experiment
from cvr.experiments.stats import NOT_COMPUTED_NOTE, paired_differences, paired_t_test, reliability_bins, summarize
from cvr.experiments.tracking import Tracker, TrackingError, resolve_tracking_uri

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "conf" / "experiments").glob("*.yaml"))


def small_spec(**changes):
    data = {
        "name": "tiny",
        "data": {"preset": ["default", "sparse"], "days": 3, "impressions_per_day": 1000},
        "grid": [{"model": "esmm"}, {"model": "cl4cvr", "contrastive.alpha": [0.01, 0.1]}],
        "seeds": 2,
        **changes,
    }
    return experiment_from_dict(data, "tiny.yaml")


# ---------------------------------------------------------------- spec and grid


def test_grid_expands_presets_points_and_seeds_with_unique_ids():
    trials = expand_trials(small_spec())
    assert len(trials) == 2 * 3 * 2  # presets x grid points x seeds
    assert len({t.trial_id for t in trials}) == len(trials)
    assert [t.seed for t in trials[:2]] == [1, 2]
    assert {t.data_label for t in trials} == {"default", "sparse"}
    # Seeds of one point share a group id; different points and presets do not.
    assert trials[0].group_id == trials[1].group_id
    assert len({t.group_id for t in trials}) == 6
    alpha = [t for t in trials if t.model == "cl4cvr" and t.data_label == "default" and t.seed == 1]
    assert [t.variant for t in alpha] == ["contrastive.alpha=0.01", "contrastive.alpha=0.1"]


def test_trial_ids_are_stable_across_key_order_and_change_with_params():
    spec = small_spec()
    reordered = small_spec(
        grid=[{"model": "esmm"}, {"contrastive.alpha": [0.01, 0.1], "model": "cl4cvr"}],
        data={"impressions_per_day": 1000, "days": 3, "preset": ["default", "sparse"]},
    )
    assert [t.trial_id for t in expand_trials(spec)] == [t.trial_id for t in expand_trials(reordered)]
    # Golden value: the id is a hash of the trial's parameters, so it must not drift between versions.
    first = expand_trials(spec)[0]
    assert first.trial_id == GOLDEN_FIRST_ID
    expected_params = {
        "base": first.params["base"],
        "data": {
            "source": "simulate",
            "preset": "default",
            "days": 3,
            "holdout_days": 1,
            "impressions_per_day": 1000,
            "start_date": "2026-01-01",
            "seed": 7,
        },
        "model": "esmm",
        "model_overrides": {},
        "train": {},
        "seed": 1,
    }
    assert first.params == expected_params
    canonical = json.dumps(expected_params, sort_keys=True, separators=(",", ":")).encode()
    assert first.trial_id == hashlib.sha256(canonical).hexdigest()[:12]
    more_rows = small_spec(data={"preset": ["default", "sparse"], "days": 3, "impressions_per_day": 2000})
    assert not {t.trial_id for t in expand_trials(spec)} & {t.trial_id for t in expand_trials(more_rows)}
    other_base = small_spec(base={"train": {"epochs": 5}})
    assert expand_trials(spec)[0].trial_id != expand_trials(other_base)[0].trial_id


def test_trial_ids_follow_the_resolved_base_config_but_not_execution_settings(tmp_path):
    spec = small_spec(seeds=1, data={"preset": "default"})
    configs = {name: tmp_path / f"{name}.yaml" for name in ("one_epoch", "three_epochs", "more_readers")}
    configs["one_epoch"].write_text("train:\n  epochs: 1\n")
    configs["three_epochs"].write_text("train:\n  epochs: 3\n")
    configs["more_readers"].write_text("train:\n  epochs: 1\n  reader_workers: 4\n  np: 2\n")

    def ids(name):
        run = run_experiment(spec, config_path=str(configs[name]), root=str(tmp_path), dry_run=True)
        return [o.trial.trial_id for o in run.outcomes]

    assert ids("one_epoch") != ids("three_epochs")
    assert ids("one_epoch") == ids("more_readers")


GOLDEN_FIRST_ID = "e5fd4f8821b3"


def test_duplicate_grid_points_run_once():
    spec = small_spec(grid=[{"model": ["esmm", "lr"]}, {"model": "esmm"}], seeds=1, data={"preset": "default"})
    assert [t.model for t in expand_trials(spec)] == ["esmm", "lr"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"grid": [{"contrastive.alpha": [0.1]}]}, "grid[0]: key 'model' is required"),
        ({"grid": {"model": "esmm", "train.seed": [1, 2]}}, "axis 'train.seed' is not a sweepable train field"),
        ({"data": {"preset": ["dense"]}}, "key 'data.preset'"),
        ({"seeds": 0}, "key 'seeds'"),
        ({"name": "bad name!"}, "key 'name'"),
        ({"grid": {"model": "esmm"}, "colour": "red"}, "unknown key 'colour'"),
        ({"data": {"holdout_days": 3, "days": 3}}, "key 'data.holdout_days'"),
    ],
)
def test_invalid_experiment_names_the_file_and_key(change, expected):
    with pytest.raises(ConfigError) as err:
        small_spec(**change)
    assert "tiny.yaml" in str(err.value) and expected in str(err.value)


def test_nest_dotted_builds_model_overrides_and_rejects_conflicts():
    assert nest_dotted({"contrastive.alpha": 0.1, "contrastive.fne": "exact", "tower.dropout": 0.2}) == {
        "contrastive": {"alpha": 0.1, "fne": "exact"},
        "tower": {"dropout": 0.2},
    }
    with pytest.raises(ValueError, match="conflicts"):
        nest_dotted({"contrastive": 1, "contrastive.alpha": 0.1})


def test_trial_config_sets_model_overrides_seed_days_and_a_data_root_per_preset(tmp_path):
    spec = small_spec(base={"train": {"epochs": 1, "model_overrides": {"tower": {"dropout": 0.1}}}})
    base = base_config(spec, root=str(tmp_path))
    trials = expand_trials(spec)
    cl = next(t for t in trials if t.model == "cl4cvr" and t.seed == 2 and t.data_label == "sparse")
    cfg = trial_config(base, spec, cl)
    assert cfg.train.model == "cl4cvr" and cfg.train.seed == 2 and cfg.train.epochs == 1
    assert cfg.train.model_overrides == {"tower": {"dropout": 0.1}, "contrastive": {"alpha": 0.01}}
    assert cfg.train.train_days == ["2026-01-01", "2026-01-02"] and cfg.train.valid_days == ["2026-01-03"]
    assert cfg.simulate.preset == "sparse" and cfg.simulate.impressions_per_day == 1000
    roots = {t.data_label: trial_config(base, spec, t).storage.root for t in trials}
    assert len(set(roots.values())) == 2
    assert all(Path(r).parent == tmp_path / "experiments" / "_data" for r in roots.values())
    # Every model of one preset shares the same data.
    assert {trial_config(base, spec, t).storage.root for t in trials if t.data_label == "default"} == {roots["default"]}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_experiments_expand_and_every_model_config_accepts_its_overrides(path, tmp_path):
    spec = load_experiment(path)
    run = run_experiment(spec, root=str(tmp_path), dry_run=True)  # checks each grid point with cvr.models
    assert run.count("pending") == len(expand_trials(spec)) > 0
    assert set(spec.data.preset) <= {"default", "sparse"} and spec.data.preset and len(spec.seeds) == 3
    assert spec.paired_baseline in {t.model for t in expand_trials(spec)}
    assert not (tmp_path / "experiments").exists()  # a dry run writes nothing


def test_shipped_ablation_holds_the_paper_variants():
    models = {t.model for t in expand_trials(load_experiment(REPO / "conf/experiments/cl4cvr_ablation.yaml"))}
    assert {"esmm", "cl_feature_mask", "cl_dropout", "cl_em", "cl_em_fne", "cl_em_spi", "cl4cvr"} <= models


def test_cli_dry_run_lists_trials(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("name: cli\ngrid: {model: [esmm, lr]}\nseeds: 2\ndata: {preset: default}\n")
    assert cvr_main(["experiment", str(path), "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and out.count(" pending ") == 4 and "pending: 4" in out and " lr " in out


def test_cli_reports_a_bad_experiment_file_as_a_configuration_error(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("name: cli\ngrid: {model: esmm}\nseeds: [1, 1]\n")
    assert cvr_main(["experiment", str(path), "--dry-run"]) == 2
    assert "key 'seeds'" in capsys.readouterr().err


# ---------------------------------------------------------------- resumable runs


class RecordingTrainer:
    """Stands in for run_training in the skip-logic tests: metrics depend on model and seed; can fail once."""

    def __init__(self, fail_model: str | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail_model = fail_model

    def __call__(self, cfg, output_dir):
        self.calls.append((cfg.train.model, cfg.train.seed))
        if cfg.train.model == self.fail_model:
            raise RuntimeError(f"{cfg.train.model} diverged")
        output_dir.mkdir(parents=True, exist_ok=True)
        lift = 0.02 if cfg.train.model == "cl4cvr" else 0.0
        auc = 0.70 + lift + 0.001 * cfg.train.seed
        history = [{"epoch": e, "train_loss": 0.5 - 0.1 * e, "cvr_auc": auc - 0.01 * (1 - e)} for e in range(2)]
        return {"cvr": {"auc": auc, "oracle_auc": auc + 0.1}, "ctcvr": {"auc": 0.8}, "history": history}


def resumable_spec():
    return small_spec(data={"preset": "default", "days": 2}, grid={"model": ["esmm", "cl4cvr"]}, seeds=2)


def test_rerun_skips_finished_trials_and_resumes_the_rest(tmp_path):
    spec = resumable_spec()
    data_calls = []
    trainer = RecordingTrainer()
    run = partial_run(spec, tmp_path, trainer, data_calls, max_trials=3)
    assert [o.status for o in run.outcomes] == ["done", "done", "done", "pending"]
    assert len(data_calls) == 1  # data made once per data root
    finished = run.outcomes[0].path
    assert json.loads((finished / "params.json").read_text())["trial_id"] == run.outcomes[0].trial.trial_id
    assert (finished / DONE_MARKER).is_file() and (finished / "metrics.json").is_file()

    again = partial_run(spec, tmp_path, trainer, data_calls)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "skipped", "done"]
    assert trainer.calls == [("esmm", 1), ("esmm", 2), ("cl4cvr", 1), ("cl4cvr", 2)]

    third = partial_run(spec, tmp_path, trainer, data_calls)
    assert {o.status for o in third.outcomes} == {"skipped"} and len(trainer.calls) == 4
    results = pd.read_csv(third.directory / "results.csv")
    assert len(results) == 4 and set(results["model"]) == {"esmm", "cl4cvr"}


def test_a_trial_without_done_marker_is_run_again(tmp_path):
    spec = resumable_spec()
    trainer = RecordingTrainer()
    first = partial_run(spec, tmp_path, trainer, [])
    crashed = first.outcomes[1].path
    (crashed / DONE_MARKER).unlink()  # as if the process died after metrics.json but before DONE
    second = partial_run(spec, tmp_path, trainer, [])
    assert [o.status for o in second.outcomes] == ["skipped", "done", "skipped", "skipped"]
    assert trainer.calls[-1] == ("esmm", 2)


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = resumable_spec()
    run = partial_run(spec, tmp_path, RecordingTrainer(fail_model="cl4cvr"), [])
    assert [o.status for o in run.outcomes] == ["done", "done", "failed", "failed"]
    failed = run.failed[0].path
    assert "cl4cvr diverged" in (failed / "error.txt").read_text() and not (failed / DONE_MARKER).exists()
    assert "cl4cvr diverged" in run.failed[0].error
    fixed = partial_run(spec, tmp_path, RecordingTrainer(), [])
    assert [o.status for o in fixed.outcomes] == ["skipped", "skipped", "done", "done"]
    assert not (failed / "error.txt").exists()


def partial_run(spec, root, trainer, data_calls, max_trials=None):
    return run_experiment(
        spec,
        root=str(root),
        max_trials=max_trials,
        train_fn=trainer,
        data_fn=lambda cfg, days: data_calls.append((cfg.storage.root, tuple(days))),
    )


# ---------------------------------------------------------------- statistics


def test_paired_t_test_matches_the_hand_computed_values():
    mean, std, p_value = paired_t_test(np.array([0.70, 0.72, 0.71]), np.array([0.68, 0.69, 0.70]))
    # diffs 0.02, 0.03, 0.01: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3 on 2 df;
    # for 2 df the two-sided p is 1 - t / sqrt(2 + t^2).
    t = 2 * math.sqrt(3)
    assert mean == pytest.approx(0.02) and std == pytest.approx(0.01)
    assert p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)


def test_paired_t_test_with_one_pair_gives_no_p_value():
    mean, std, p_value = paired_t_test(np.array([0.7]), np.array([0.6]))
    assert mean == pytest.approx(0.1) and math.isnan(std) and math.isnan(p_value)


def results_frame():
    rows = []
    for seed, (base, cl) in enumerate([(0.68, 0.70), (0.69, 0.72), (0.70, 0.71)], start=1):
        rows.append({"data": "default", "model": "esmm", "variant": "", "seed": seed, "cvr.auc": base})
        rows.append({"data": "default", "model": "cl4cvr", "variant": "", "seed": seed, "cvr.auc": cl})
    rows.append({"data": "sparse", "model": "esmm", "variant": "", "seed": 1, "cvr.auc": 0.6})
    rows.append({"data": "sparse", "model": "cl4cvr", "variant": "", "seed": 1, "cvr.auc": 0.65})
    return pd.DataFrame(rows)


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarize(results_frame(), ["cvr.auc"]).set_index(["data", "model"])
    assert summary.loc[("default", "cl4cvr"), "cvr.auc:mean"] == pytest.approx(0.71)
    assert summary.loc[("default", "cl4cvr"), "cvr.auc:std"] == pytest.approx(0.01)  # ddof=1
    assert summary.loc[("default", "esmm"), "cvr.auc:std"] == pytest.approx(0.01)
    assert summary.loc[("default", "esmm"), "n"] == 3
    assert math.isnan(summary.loc[("sparse", "esmm"), "cvr.auc:std"])


def test_paired_differences_pair_by_seed_within_each_data_variant():
    paired = paired_differences(results_frame(), "esmm", ["cvr.auc"]).set_index("data")
    assert list(paired["model"]) == ["cl4cvr", "cl4cvr"]
    assert paired.loc["default", "n_pairs"] == 3 and paired.loc["default", "note"] == ""
    assert paired.loc["default", "cvr.auc:diff_mean"] == pytest.approx(0.02)
    assert paired.loc["default", "cvr.auc:p"] == pytest.approx(0.0741799, rel=1e-5)
    assert paired.loc["sparse", "note"] == NOT_COMPUTED_NOTE and math.isnan(paired.loc["sparse", "cvr.auc:p"])


# ---------------------------------------------------------------- report and plots


def report_inputs(tmp_path):
    spec = small_spec(seeds=3)
    trainer = RecordingTrainer()
    rows, details = [], {}
    for trial in expand_trials(spec):
        cfg = types.SimpleNamespace(train=types.SimpleNamespace(model=trial.model, seed=trial.seed))
        metrics = trainer(cfg, tmp_path / "unused")
        alpha = trial.params["model_overrides"].get("contrastive.alpha", 0.0)
        metrics["cvr"]["auc"] += alpha * (1 if trial.data_label == "default" else -1)
        metrics["cvr"]["calibration"] = 1.0 + alpha
        rows.append(result_row(trial, metrics, seconds=1.0))
        bins = [{"pred": 0.01 * b, "observed": 0.01 * b * (1 + alpha), "count": 10} for b in range(1, 6)]
        details[trial.trial_id] = {"history": metrics["history"], "reliability": {"cvr": bins, "ctcvr": bins}}
    return spec, pd.DataFrame(rows), details


def test_report_renders_tables_and_png_plots(tmp_path):
    spec, results, details = report_inputs(tmp_path)
    report = write_report_files(tmp_path / "exp", spec, results, details, total_trials=len(results) + 2)
    text = report.read_text()
    assert "# Experiment `tiny`" in text and "trials finished: 18 of 20" in text
    assert "## Data: default" in text and "## Data: sparse" in text
    assert "| cl4cvr | contrastive.alpha=0.1 | 3 | 0.8220 ± 0.0010 |" in text  # 0.70 + 0.02 + 0.1 + 0.001 * seed
    assert "| cl4cvr | contrastive.alpha=0.1 | 3 | +0.1200 ± 0.0000 |" in text  # paired with esmm by seed
    for name in ("auc_per_model", "training_curves", "sensitivity_cvr_auc", "calibration"):
        png = tmp_path / "exp" / "plots" / f"{name}.png"
        assert f"plots/{name}.png" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    saved = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert len(saved) == 18 and "param:contrastive.alpha" in saved.columns and "cvr.auc" in saved.columns
    assert set(pd.read_csv(tmp_path / "exp" / "paired.csv")["model"]) == {"cl4cvr"}


def test_calibration_plot_falls_back_to_the_calibration_metric_without_predictions(tmp_path):
    spec, results, details = report_inputs(tmp_path)
    no_bins = {trial_id: {"history": d["history"]} for trial_id, d in details.items()}
    with_bins = write_report_files(tmp_path / "a", spec, results, details, total_trials=len(results))
    without = write_report_files(tmp_path / "b", spec, results, no_bins, total_trials=len(results))
    assert "plots/calibration.png" in with_bins.read_text() and "plots/calibration.png" in without.read_text()
    # Different drawings: reliability curves (2 tasks x 2 data panels) vs bars of mean prediction / observed.
    assert (tmp_path / "a/plots/calibration.png").read_bytes() != (tmp_path / "b/plots/calibration.png").read_bytes()


def test_reliability_bins_are_equal_count_bins_of_the_prediction():
    columns = {
        "p_cvr": np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8]),
        "p_ctcvr": np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]),
        "click": np.array([1, 1, 1, 1, 0, 0]),
        "conversion": np.array([0, 0, 1, 1, 0, 0]),
    }
    bins = reliability_bins(columns, bins=2)
    # CVR on the 4 clicked rows: (0.1, 0.2) -> rate 0, (0.3, 0.4) -> rate 1.
    assert bins["cvr"] == [
        {"pred": pytest.approx(0.15), "observed": 0.0, "count": 2},
        {"pred": pytest.approx(0.35), "observed": 1.0, "count": 2},
    ]
    assert [b["count"] for b in bins["ctcvr"]] == [3, 3] and [b["observed"] for b in bins["ctcvr"]] == [
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
    ]


def test_report_without_finished_trials_says_so(tmp_path):
    report = write_report_files(tmp_path / "exp", small_spec(), pd.DataFrame(), {}, total_trials=4)
    assert "No finished trials yet." in report.read_text()


# ---------------------------------------------------------------- tracking


def test_tracking_is_off_without_a_uri_and_needs_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("", tmp_path) == ""
    tracker = Tracker("", "exp")
    assert not tracker.enabled
    tracker.log_trial("t", {"model": "esmm"}, {"cvr": {"auc": 0.7}})  # no-op


def test_tracking_uri_from_env_and_the_local_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri("", tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("local", tmp_path) == (tmp_path.resolve() / "mlruns").as_uri()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_tracking_uri_without_mlflow_says_how_to_install_it(tmp_path):
    with pytest.raises(TrackingError, match="pip install mlflow"):
        Tracker("file:///tmp/mlruns", "exp")


def test_tracking_logs_params_metrics_and_history(monkeypatch):
    calls = []
    fake = types.ModuleType("mlflow")  # records the MLflow calls the tracker makes (mlflow is not installed)
    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    fake.set_experiment = lambda name: calls.append(("experiment", name))
    fake.set_tag = lambda k, v: calls.append(("tag", k, v))
    fake.log_params = lambda params: calls.append(("params", params))
    fake.log_metrics = lambda metrics, step=None: calls.append(("metrics", metrics, step))

    class Run:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake.start_run = lambda run_name: Run()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    tracker = Tracker("file:///tmp/x", "abl")
    history = [{"epoch": 0, "cvr_auc": 0.6}, {"epoch": 1, "cvr_auc": 0.7}]
    tracker.log_trial(
        "t1",
        {"model": "esmm", "model_overrides": {"contrastive.alpha": 0.1}},
        {"cvr": {"auc": 0.7, "rows": 10}, "model": "esmm", "history": history},
    )
    assert ("experiment", "abl") in calls and ("tag", "trial_id", "t1") in calls
    assert ("params", {"model": "esmm", "model_overrides.contrastive.alpha": "0.1"}) in calls
    assert ("metrics", {"cvr.auc": 0.7, "cvr.rows": 10.0}, None) in calls
    assert ("metrics", {"history.epoch": 1.0, "history.cvr_auc": 0.7}, 1) in calls


def test_experiment_with_tracking_but_no_mlflow_fails_before_training(tmp_path):
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    trainer = RecordingTrainer()
    with pytest.raises(TrackingError):
        run_experiment(
            small_spec(tracking_uri="local"), root=str(tmp_path), train_fn=trainer, data_fn=lambda c, d: None
        )
    assert trainer.calls == []


# ---------------------------------------------------------------- end to end: real pipeline, real training


def test_experiment_on_existing_tables_trains_real_models_and_reports(tmp_path):
    pytest.importorskip("cvr.train.api", reason="the training API has not landed")
    from train_fixtures import make_features_table

    make_features_table(tmp_path, days=2, rows_per_day=2000, row_group_rows=500)
    spec = experiment_from_dict(
        {
            "name": "existing",
            "base": {"train": {"epochs": 1, "batch_size": 256, "reader_workers": 1}},
            "data": {"source": "existing", "train_ds": ["2026-01-01"], "valid_ds": ["2026-01-02"]},
            "grid": {"model": ["esmm", "naive_cvr"]},
            "seeds": 2,
        },
        "existing.yaml",
    )
    run = run_experiment(spec, root=str(tmp_path))
    assert [o.status for o in run.outcomes] == ["done"] * 4, [o.error for o in run.failed]
    results = pd.read_csv(run.directory / "results.csv").set_index(["model", "seed"])
    assert results["cvr.auc"].between(0, 1).all() and results["cvr.oracle_auc"].between(0, 1).all()
    assert results.loc[("esmm", 1), "cvr.auc"] != results.loc[("esmm", 2), "cvr.auc"]  # seeds train differently
    metrics = json.loads((run.outcomes[0].path / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and (run.outcomes[0].path / "artifact" / "scoring.pt").is_file()
    clicked = sum(b["count"] for b in metrics["reliability"]["cvr"])
    assert clicked == metrics["cvr"]["rows"] and sum(b["count"] for b in metrics["reliability"]["ctcvr"]) == 2000
    text = run.report.read_text()
    assert "## Data: existing" in text and "| naive_cvr | – | 2 |" in text
    assert (run.directory / "plots" / "calibration.png").is_file()


@pytest.mark.slow
def test_tiny_experiment_end_to_end_with_the_real_pipeline_and_training(spark, tmp_path):
    pytest.importorskip("cvr.pipeline.simulate_stage", reason="the simulator stage has not landed")
    pytest.importorskip("cvr.pipeline.stages", reason="the pipeline stages have not landed")
    pytest.importorskip("cvr.train.api", reason="the training API has not landed")
    spec = experiment_from_dict(
        {
            "name": "e2e",
            "base": {
                "simulate": {"users": 300, "items": 200, "partitions": 2},
                "storage": {"row_group_rows": 500},
                "train": {"epochs": 1, "batch_size": 256, "reader_workers": 1},
            },
            "data": {"preset": "default", "days": 2, "impressions_per_day": 3000},
            "grid": {"model": ["esmm", "cl4cvr"]},
            "seeds": 2,
        },
        "e2e.yaml",
    )
    run = run_experiment(spec, root=str(tmp_path), spark=spark)
    assert [o.status for o in run.outcomes] == ["done"] * 4, [o.error for o in run.failed]
    results = pd.read_csv(run.directory / "results.csv")
    assert len(results) == 4 and set(results["model"]) == {"esmm", "cl4cvr"}
    assert results["cvr.auc"].between(0, 1).all() and results["ctcvr.oracle_auc"].between(0, 1).all()
    assert (run.outcomes[0].path / "artifact" / "scoring.pt").is_file()
    text = run.report.read_text()
    assert "| cl4cvr | – | 2 |" in text and "Paired difference to `esmm`" in text
    assert (run.directory / "plots" / "auc_per_model.png").is_file()
    # Re-running finds every trial finished: nothing is trained again.
    trainer = RecordingTrainer()
    again = run_experiment(spec, root=str(tmp_path), spark=spark, train_fn=trainer)
    assert {o.status for o in again.outcomes} == {"skipped"} and trainer.calls == []
