"""One MLflow parent run per pipeline run, with each stage's run nested under it, and retries reusing both."""

from __future__ import annotations

import pytest

from registry_fixtures import register_table_model, table_classifier

PIPELINE = "kfp-run-7"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite store as the stages see it (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); MLflow's globals restored."""
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # connect() moves it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return uri, MlflowClient(uri, registry_uri=uri)


def runs_of(client, filter_string: str = ""):
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string) if experiment else []


def parents(client):
    return runs_of(client, f"tags.`trainflow.pipeline_run_id` = '{PIPELINE}' and tags.`trainflow.kind` = 'pipeline'")


def record_stage(stage: str, values: dict, pipeline_run_id: str = PIPELINE):
    from trainflow.registry.pipeline_run import log_numbers, stage_run

    with stage_run(pipeline_run_id, stage) as tracked:
        if tracked is not None:
            log_numbers(*tracked, values)
        return tracked[1] if tracked else None


def test_helpers_find_before_they_create(store):
    from trainflow.registry.pipeline_run import pipeline_parent_run, stage_child_run
    from trainflow.registry.tracking import ensure_experiment

    uri, client = store
    experiment_id = ensure_experiment(client, "tests", uri)
    parent = pipeline_parent_run(client, experiment_id, PIPELINE, "trainflow-supervised")
    assert pipeline_parent_run(client, experiment_id, PIPELINE) == parent
    assert client.get_run(parent).data.tags["trainflow.pipeline"] == "trainflow-supervised"
    child = stage_child_run(client, experiment_id, parent, "evaluate", PIPELINE)
    assert stage_child_run(client, experiment_id, parent, "evaluate", PIPELINE) == child
    assert stage_child_run(client, experiment_id, parent, "train", PIPELINE) != child
    other = pipeline_parent_run(client, experiment_id, "kfp-run-8")
    assert other != parent and stage_child_run(client, experiment_id, other, "evaluate", "kfp-run-8") != child
    assert len(runs_of(client)) == 5


def test_a_concurrently_created_duplicate_parent_is_dropped_for_the_oldest(store):
    from trainflow.registry import pipeline_run
    from trainflow.registry.tracking import ensure_experiment

    uri, client = store
    experiment_id = ensure_experiment(client, "tests", uri)
    first = client.create_run(experiment_id, tags={pipeline_run.PIPELINE_RUN_TAG: PIPELINE, "trainflow.kind": "pipeline"})
    searches = []
    original = client.search_runs

    def search_that_misses_once(*args, **kwargs):  # as if `first` was committed just after this process looked
        searches.append(1)
        return [] if len(searches) == 1 else original(*args, **kwargs)

    client.search_runs = search_that_misses_once
    assert pipeline_run.pipeline_parent_run(client, experiment_id, PIPELINE) == first.info.run_id
    client.search_runs = original
    assert [run.info.run_id for run in parents(client)] == [first.info.run_id], "the later duplicate is deleted"


def test_the_stages_nest_under_one_parent_and_a_retry_reuses_its_run(store, tmp_path, capsys):
    uri, client = store
    evaluate_run = record_stage("evaluate", {"accuracy": 0.75, "num_test": 40, "last_is_best": True})
    score_run = record_stage("score_generation", {"fid": 12.5})
    assert record_stage("evaluate", {"accuracy": 0.8}) == evaluate_run, "a retried stage records into its run"
    model_dir = table_classifier(tmp_path / "model")
    first = register_table_model(model_dir, uri, tmp_path / "r1.md", pipeline_run_id=PIPELINE)
    again = register_table_model(model_dir, uri, tmp_path / "r2.md", pipeline_run_id=PIPELINE)
    assert first["mlflow_run_id"] == again["mlflow_run_id"] and first["model_version"] == again["model_version"] == 1

    (parent,) = parents(client)
    assert parent.info.status == "FINISHED", "the register stage, the last one, closes the pipeline run's record"
    children = runs_of(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {run.data.tags["trainflow.stage"]: run for run in children}
    assert len(children) == 3 and set(by_stage) == {"evaluate", "score_generation", "register_model"}
    assert by_stage["evaluate"].info.run_id == evaluate_run and by_stage["score_generation"].info.run_id == score_run
    assert by_stage["register_model"].info.run_id == first["mlflow_run_id"]
    assert by_stage["register_model"].data.tags["trainflow.registration_key"] == f"{PIPELINE}/classification"
    assert by_stage["evaluate"].data.metrics == {"accuracy": 0.8, "num_test": 40.0}, "the retry's value is the latest"
    assert by_stage["score_generation"].data.metrics == {"fid": 12.5}
    assert all(run.data.tags["trainflow.pipeline_run_id"] == PIPELINE for run in children)
    assert {run.info.status for run in children} == {"FINISHED"}
    assert len(runs_of(client)) == 4
    assert "warning" not in capsys.readouterr().err


def test_the_run_kfp_made_for_the_pipeline_run_is_the_parent(store, monkeypatch, tmp_path):
    from trainflow.registry.tracking import ensure_experiment

    uri, client = store
    given = client.create_run(ensure_experiment(client, "tests", uri), run_name="kfp's run").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", given)
    child = record_stage("evaluate", {"accuracy": 0.5})
    result = register_table_model(table_classifier(tmp_path / "model"), uri, tmp_path / "r.md", pipeline_run_id=PIPELINE)
    for run_id in (child, result["mlflow_run_id"]):
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == given
    assert client.get_run(given).data.tags["trainflow.pipeline_run_id"] == PIPELINE
    assert client.get_run(given).info.status == "RUNNING", "KFP's integration ends the run it made"
    assert len(runs_of(client)) == 3


def test_the_train_stages_step_metrics_go_to_its_child_run(store, tmp_path):
    from trainflow.config import TrainConfig
    from trainflow.stages.train import _mlflow_steps
    from trainflow.training.training_log import TrainingLog

    uri, client = store
    cfg = TrainConfig.model_validate({"logging": {"mlflow": True, "every_n_steps": 1, "tensorboard": False}})
    for attempt in range(2):  # the retried pod records into the same run
        with _mlflow_steps(cfg, PIPELINE) as tracked:
            log = TrainingLog(cfg.logging, tmp_path / f"checkpoints{attempt}", None, enabled=True)
            for step in (1, 2):
                log.step({"step": step, "epoch": 0, "loss": 1.0 / step + attempt})
            log.validation(2, {"val_loss": 0.4})
    (parent,) = parents(client)
    (train,) = runs_of(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`trainflow.stage` = 'train'")
    assert train.info.run_id == tracked[1] and train.info.status == "FINISHED"
    history = client.get_metric_history(train.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (1, 2.0), (2, 0.5), (2, 1.5)]
    assert train.data.metrics["val_loss"] == 0.4
    off = TrainConfig.model_validate({"logging": {"mlflow": False}})
    with _mlflow_steps(off, "kfp-run-9") as tracked:
        assert tracked is None
    assert len(runs_of(client)) == 2, "train.logging.mlflow off: no run"


def test_no_store_or_no_pipeline_run_id_records_nothing(store, monkeypatch):
    uri, client = store
    assert record_stage("evaluate", {"accuracy": 1.0}, pipeline_run_id="") is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert record_stage("evaluate", {"accuracy": 1.0}) is None
    assert runs_of(client) == []


def test_an_unreachable_store_is_one_warning_line_not_a_failed_stage(store, monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:planted-pw@127.0.0.1:{port}")
    assert record_stage("evaluate", {"accuracy": 1.0}) is None
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("evaluate: warning: not recorded in MLflow:"), err
    assert "planted-pw" not in err


def test_a_distributed_train_steps_pods_record_into_the_train_child_run(store, tmp_path):
    from fake_kubernetes_api import FakeKubernetesApi, success_script
    from test_platform import RUN_ID, DistributedRun

    uri, client = store
    run = DistributedRun(tmp_path, "pytorchjob")
    with FakeKubernetesApi() as fake:
        fake.scripts[run.job] = success_script("pytorchjobs", on_success=run.finish_training)
        run.train(fake)
        (post,) = fake.calls_to("POST", "pytorchjobs")
    pod = post["body"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    env = {entry["name"]: entry.get("value") for entry in pod["containers"][0]["env"]}
    (parent,) = runs_of(client, f"tags.`trainflow.pipeline_run_id` = '{RUN_ID}' and tags.`trainflow.kind` = 'pipeline'")
    (train,) = runs_of(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert train.data.tags["trainflow.stage"] == "train" and env["MLFLOW_RUN_ID"] == train.info.run_id
    assert env["MLFLOW_TRACKING_URI"] == uri, "the pods look the run up in the store it is in"
    assert train.data.metrics["best_value"] == 0.25 and train.info.status == "FINISHED"
