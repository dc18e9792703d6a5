"""trainflow cross-validate: folds trained and scored, aggregates equal the folds' own numbers, the corrected t-test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from trainflow.config import RunConfig, parse_section
from trainflow.experiments.cv_statistics import corrected_resampled_ttest, fold_interval


def test_the_fold_interval_is_the_student_t_interval_of_the_fold_values():
    values = [0.81, 0.84, 0.79, 0.88, 0.83]
    row = fold_interval(values, 0.9)
    expected = stats.t.interval(0.9, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values, ddof=1))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(expected)
    assert "interval_skipped" in fold_interval([0.5]) and "ci_low" not in fold_interval([0.5])


def test_the_corrected_resampled_t_test_inflates_the_variance_by_the_test_to_train_ratio():
    a, b = [0.82, 0.85, 0.80, 0.86, 0.84], [0.80, 0.84, 0.80, 0.83, 0.81]
    d = np.subtract(a, b)
    result = corrected_resampled_ttest(a, b, n_train=400, n_test=100)
    t = d.mean() / math.sqrt((1 / 5 + 100 / 400) * d.var(ddof=1))
    assert result["t"] == pytest.approx(t) and result["df"] == 4
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    naive = stats.ttest_rel(a, b)
    assert result["p_value"] > naive.pvalue  # the correction is more cautious than the paired t-test


@pytest.mark.slow
def test_cross_validation_on_diabetes_trains_every_fold_and_its_aggregates_are_the_folds_own_numbers(tmp_path):
    from trainflow.evaluation.record_outputs import load_record_outputs
    from trainflow.experiments.cross_validation_run import compare_configurations, cross_validate_locally

    payload = {
        "run_name": "cv-test", "task": "regression", "seed": 0,
        "ingest": {"sklearn_dataset": "diabetes", "split": {"train": 0.7, "val": 0.15, "test": 0.15}},
        "model": {"architecture": "mlp", "hidden_sizes": [8]},
        "train": {"max_epochs": 4, "batch_size": 32, "optimizer": {"learning_rate": 1e-2}, "schedule": {"name": "constant"},
                  "early_stopping": {"monitor": "val_mse", "patience": None}, "logging": {"tensorboard": False},
                  "device": "cpu", "mixed_precision": "no"},
        "evaluate": {"bootstrap_resamples": 0}, "register": {"model_name": "cv-test"},
        "cross_validation": {"folds": 3},
    }
    results = cross_validate_locally(parse_section(RunConfig, payload, "t"), tmp_path)
    folds = results["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for name in ("r2", "rmse", "mae"):
        values = [f["metrics"][name] for f in folds]
        row = results["metrics"][name]
        assert row["mean"] == pytest.approx(sum(values) / 3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            stats.t.interval(0.95, df=2, loc=np.mean(values), scale=stats.sem(values)))
    # Out-of-fold predictions: every non-test record once, from the fold that held it out.
    oof = load_record_outputs(Path(results["folder"]) / "oof" / "repeat-0")
    plan = json.loads((Path(results["folder"]) / "data" / "dataset" / "folds.json").read_text())
    assert sorted(oof.record_ids) == sorted(i for f in plan["folds"] for i in f["val"])
    assert not set(oof.record_ids) & set(plan["test"])
    assert sum(f["n_held_out"] for f in folds) == len(oof.record_ids)
    # A re-run resumes: finished folds are read back, not trained again.
    again = cross_validate_locally(parse_section(RunConfig, payload, "t"), tmp_path)
    assert again["metrics"] == results["metrics"]
    # A second configuration on the same folds, compared by the corrected resampled t-test.
    payload_b = {**payload, "run_name": "cv-test-b", "model": {"architecture": "mlp", "hidden_sizes": [2]}}
    other = cross_validate_locally(parse_section(RunConfig, payload_b, "t"), tmp_path)
    test = compare_configurations(results, other)["r2"]
    assert test["df"] == 2 and 0.0 <= test["p_value"] <= 1.0
    assert test["mean_difference"] == pytest.approx(results["metrics"]["r2"]["mean"] - other["metrics"]["r2"]["mean"])


def test_a_cross_validation_is_one_mlflow_parent_run_with_a_child_run_per_fold(tmp_path):
    from mlflow import MlflowClient

    from trainflow.experiments.mlflow_runs import log_cross_validation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folds = [{"repeat": 0, "fold": k, "n_train": 80, "n_held_out": 20, "metrics": {"r2": 0.4 + 0.1 * k}} for k in range(3)]
    results = {"run_name": "cv", "folds": folds, "metrics": {"r2": fold_interval([0.4, 0.5, 0.6])}}
    parent = log_cross_validation(uri, "experiments-test", results)
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs([client.get_experiment_by_name("experiments-test").experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.data.metrics["r2"] for run in children) == pytest.approx([0.4, 0.5, 0.6])
    assert client.get_run(parent).data.metrics["r2_mean"] == pytest.approx(0.5)


def nested_payload() -> dict:
    return {
        "run_name": "cv-nested", "task": "regression", "seed": 0,
        "ingest": {"sklearn_dataset": "diabetes", "split": {"train": 0.7, "val": 0.15, "test": 0.15}},
        "model": {"architecture": "mlp", "hidden_sizes": [8]},
        "train": {"max_epochs": 2, "batch_size": 32, "optimizer": {"learning_rate": 1e-2}, "schedule": {"name": "constant"},
                  "early_stopping": {"monitor": "val_mse", "patience": None}, "logging": {"tensorboard": False},
                  "device": "cpu", "mixed_precision": "no"},
        "evaluate": {"bootstrap_resamples": 0}, "register": {"model_name": "cv-nested"},
        "tune": {"params": {"train.optimizer.learning_rate": {"float": [1e-3, 5e-2], "log": True}}, "trials": 2,
                 "pruner": "none"},
        "cross_validation": {"folds": 2, "nested": True},
    }


def test_nested_cross_validation_needs_a_tune_section():
    payload = nested_payload()
    del payload["tune"]
    with pytest.raises(Exception) as caught:
        parse_section(RunConfig, payload, "c.yaml")
    assert "cross_validation.nested: tunes inside each outer fold, so the config needs a tune section" in str(caught.value)


@pytest.mark.slow
def test_nested_cross_validation_tunes_each_fold_on_its_own_training_records_and_trains_what_its_study_chose(tmp_path):
    from trainflow.data.manifest import read_manifest
    from trainflow.experiments.cross_validation_run import cross_validate_locally

    results = cross_validate_locally(parse_section(RunConfig, nested_payload(), "t"), tmp_path)
    assert results["nested"] is True and "tune-then-train" in results["nested_note"]
    for fold in results["folds"]:
        folder = Path(results["folder"]) / "folds" / f"r{fold['repeat']}-f{fold['fold']}"
        study = json.loads((folder / "study" / "results.json").read_text())
        assert study["counts"]["complete"] == 2
        assert fold["tuned_params"] == study["best"]["params"] and fold["inner_best"] == study["best"]["values"]
        # The inner study's trials read the fold's cache, whose test split is the held-out fold: they train on
        # train and are scored on val, and the held-out records are in neither.
        entries = read_manifest(folder / "dataset")
        held_out = {e.record_id for e in entries if e.split == "test"}
        assert len(held_out) == fold["n_held_out"] and not held_out & {e.record_id for e in entries if e.split != "test"}
        record = json.loads((folder / "model" / "trainflow_training.json").read_text())
        assert record["steps_run"] > 0
    values = [f["metrics"]["r2"] for f in results["folds"]]
    assert results["metrics"]["r2"]["mean"] == pytest.approx(sum(values) / len(values))


def test_cross_validate_command_line_overrides_land_in_the_cross_validation_section(capsys):
    from types import SimpleNamespace

    from trainflow.cli import main
    from trainflow.commands.cross_validate import cv_config

    config = str(Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "diabetes-regression.yaml")
    assert main(["cross-validate", "--config", config, "--folds", "1"]) == 2
    assert "with --folds: cross_validation.folds" in capsys.readouterr().err
    cv = cv_config(config, SimpleNamespace(folds=3, repeats=2, nested=True)).cross_validation
    assert (cv.folds, cv.repeats, cv.nested) == (3, 2, True)
