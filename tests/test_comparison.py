"""Candidate vs champion: per-record paired comparison, the MLflow champion alias, `trainflow compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from test_evaluation_report import run_evaluate, tiny_supervised_run
from trainflow.artifacts import LocalArtifact
from trainflow.evaluation.paired import compare_arrays
from trainflow.evaluation.record_outputs import load_record_outputs
from trainflow.tasks import get_task
from trainflow.models.model_folder import save_model_folder
from trainflow.models.model_folder import load_model_folder


@pytest.fixture(scope="module")
def candidate_and_chance(tmp_path_factory):
    """A trained iris classifier (evaluated) and a same-architecture model that predicts uniform probabilities."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("compare")
    run = tiny_supervised_run(root, monkeypatch, scripted=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    result, out = run_evaluate(run, root / "evaluated")
    assert result["accuracy"] > 0.8, "the candidate must be clearly better than chance for these tests to mean anything"
    model, meta = load_model_folder(run["model"].path)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # zero weights: equal logits, uniform probabilities, always the first class
    save_model_folder(model, root / "chance-model", meta)
    return run, result, out, root / "chance-model"


def register(run, out, model_dir, tmp: Path, name: str, gates: list[dict], eval_metrics: dict) -> dict:
    from trainflow.stages.register_model import register_model

    config = {"model_name": "iris", "experiment": "tests", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
              "gates": gates, "comparison_resamples": 300}
    return register_model(str(model_dir), run["dataset"].metadata, eval_metrics, {}, config, name, {"seed": 0},
                          LocalArtifact(str(tmp / f"{name}.md")), task="classification",
                          predictions_dir=out["predictions"].path, cache_dir=run["cache"].path, seed=0)


def test_a_model_compared_with_itself_shows_no_difference(candidate_and_chance):
    _, _, out, _ = candidate_and_chance
    scored = load_record_outputs(out["predictions"].path)
    result = compare_arrays(get_task(scored.task).metric_function(scored.names), scored.arrays("best"), scored.arrays("best"),
                            "accuracy", n_resamples=200)
    assert result["difference"] == result["low"] == result["high"] == 0 and result["p_better"] == 0
    assert result["verdict"] == "no difference at 95% confidence (the interval contains 0)"


@pytest.mark.slow  # three MLflow registrations on SQLite: ~30 s on a busy 2-core machine
def test_champion_alias_gates_and_moves(candidate_and_chance, tmp_path):
    from mlflow import MlflowClient

    from trainflow.registry.champion import champion_evidence
    from trainflow.config import RegisterConfig

    run, result, out, chance_dir = candidate_and_chance
    gate = [{"metric": "accuracy", "beat_champion": True}]
    first = register(run, out, chance_dir, tmp_path, "chance", gate, {"accuracy": 1 / 3})
    assert first["registered"] and first["champion"]["version"] is None
    assert "No champion yet" in (tmp_path / "chance.md").read_text()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("iris", "champion").version) == 1

    second = register(run, out, run["model"].path, tmp_path, "trained", gate, {"accuracy": result["accuracy"]})
    compared = second["champion"]["comparisons"]["accuracy"]
    assert second["registered"] and second["champion"]["version"] == 1
    assert compared["a"] == pytest.approx(result["accuracy"]) and compared["improvement_low"] > 0
    assert int(client.get_model_version_by_alias("iris", "champion").version) == 2
    assert "Alias `champion` now points to it" in (tmp_path / "trained.md").read_text()

    third = register(run, out, run["model"].path, tmp_path, "again", gate, {"accuracy": result["accuracy"]})
    assert third["registered"] and third["model_version"] == 3 and not third["promoted"]
    assert third["champion"]["comparisons"]["accuracy"]["difference"] == 0
    assert "vs the champion's (version 2)" in third["promotion_reason"]
    assert third["promotion_reason"].endswith("so it is not better than the champion with 95% confidence")
    assert int(client.get_model_version_by_alias("iris", "champion").version) == 2, "a challenger leaves the champion alias"
    assert int(client.get_model_version_by_alias("iris", "challenger").version) == 3
    assert client.get_model_version("iris", "3").tags["trainflow.promotion"] == third["promotion_reason"]
    run_tags = client.get_run(third["mlflow_run_id"]).data
    assert run_tags.tags["trainflow.champion_version"] == "2" and run_tags.metrics["vs_champion_accuracy_improvement"] == 0

    cfg = RegisterConfig(model_name="iris", gates=gate)
    evidence = champion_evidence(cfg, cfg.gates, client, f"sqlite:///{tmp_path / 'mlflow.db'}", "text_to_image", None, None, 0)
    assert "does not keep for text_to_image; use beat_base" in evidence.unavailable["accuracy"]


def test_compare_command_prints_the_difference_with_its_interval(candidate_and_chance, tmp_path, capsys):
    from trainflow.cli import main

    run, result, _, chance_dir = candidate_and_chance
    config = {"run_name": "iris", "task": "classification", "seed": 0, "ingest": {"sklearn_dataset": "iris"},
              "model": run["model_config"], "evaluate": {"bootstrap_resamples": 300},
              "register": {"model_name": "iris", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    (tmp_path / "iris.yaml").write_text(yaml.safe_dump(config))
    code = main(["compare", "--config", str(tmp_path / "iris.yaml"), "--a", run["model"].path, "--b", str(chance_dir),
                 "--metric", "accuracy", "--metric", "log_loss", "--json", str(tmp_path / "cmp.json")])
    printed = capsys.readouterr().out
    assert code == 0 and "rebuilt from the config" in printed
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["records"] == result["num_test"], "the rebuilt test split is the pipeline's"
    accuracy, log_loss = saved["comparisons"]["accuracy"], saved["comparisons"]["log_loss"]
    assert accuracy["a"] == pytest.approx(result["accuracy"]) and accuracy["low"] > 0
    assert log_loss["lower_is_better"] and log_loss["high"] < 0 and log_loss["improvement_low"] > 0
    assert f"accuracy (higher is better): a {accuracy['a']:.4f}, b {accuracy['b']:.4f}" in printed
    assert f"95% interval {accuracy['low']:+.4f} to {accuracy['high']:+.4f}" in printed

    code = main(["compare", "--config", str(tmp_path / "iris.yaml"), "--a", run["model"].path, "--b", "models:/iris@champion",
                 "--cache", run["cache"].path])
    assert code == 2
    assert "models:/iris@champion: registered model 'iris' has no alias 'champion'" in capsys.readouterr().err
