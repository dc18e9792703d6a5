"""One MLflow parent run per pipeline run; each stage's run nested under it.

A pipeline run (one KFP run id) is one parent run, tagged `trainflow.pipeline_run_id`; the train
stage's step metrics, the evaluate and score stages' test metrics and the register stage's run are
child runs (`mlflow.parentRunId`, `trainflow.stage`), which is how the MLflow UI nests them. Every
run is found before it is created, so a retried stage (or a stage that runs after another already
created the parent) reuses it. When KFP's MLflow integration already made a run for the pipeline
run it passes its id as MLFLOW_RUN_ID: that run is the parent then.

Two stages that create the parent at the same moment (evaluate and score run side by side) both
look again after creating and keep the oldest (by start time, then run id); the other is deleted.

Train, evaluate and score record into MLflow only when MLFLOW_TRACKING_URI is set (a cluster task
placed with MLflow, or `trainflow run`, which exports the register section's store) and they know
the pipeline run id; the experiment is MLFLOW_EXPERIMENT_NAME (the register section's), else
`trainflow`. An unreachable store is one warning line and the stage goes on: tracking is a record
of the stage, not its result. The register stage keeps failing loudly (trainflow.registry.tracking.connect).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

PIPELINE_RUN_TAG = "trainflow.pipeline_run_id"
STAGE_TAG = "trainflow.stage"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG, PIPELINE_KIND = "trainflow.kind", "pipeline"
KFP_RUN_ENV = "MLFLOW_RUN_ID"  # set by KFP's MLflow integration: the run made for this pipeline run
DEFAULT_EXPERIMENT = "trainflow"
STAGE_CONNECT_TRIES = 2  # train/evaluate/score: about a second of waiting, then a warning and no record


def _oldest(runs: list[Any]) -> Any:
    return min(runs, key=lambda run: (run.info.start_time or 0, run.info.run_id))


def _find_or_create(client, experiment_id: str, filter_string: str, run_name: str, tags: dict[str, str]):
    """The oldest active run matching `filter_string`, else a new one with `tags`; a concurrent duplicate is deleted."""
    found = client.search_runs([experiment_id], filter_string=filter_string, max_results=50)
    if found:
        return _oldest(found)
    created = client.create_run(experiment_id, run_name=run_name or None, tags=tags)
    found = client.search_runs([experiment_id], filter_string=filter_string, max_results=50)
    kept = _oldest(found) if found else created
    if kept.info.run_id != created.info.run_id:  # another process created one first: use it, drop ours
        client.delete_run(created.info.run_id)
    return kept


def pipeline_parent_run(client, experiment_id: str, pipeline_run_id: str, pipeline_name: str = "",
                        run_name: str = "") -> str:
    """The id of the pipeline run's parent run: MLFLOW_RUN_ID when set, else the run tagged with the id (made once)."""
    given = os.environ.get(KFP_RUN_ENV)
    if given:
        client.set_tag(given, PIPELINE_RUN_TAG, pipeline_run_id)
        return given
    tags = {PIPELINE_RUN_TAG: pipeline_run_id, KIND_TAG: PIPELINE_KIND}
    if pipeline_name:
        tags["trainflow.pipeline"] = pipeline_name
    run = _find_or_create(client, experiment_id, f"tags.`{PIPELINE_RUN_TAG}` = '{_quoted(pipeline_run_id)}'",
                          run_name or f"pipeline {pipeline_run_id}", tags)
    return run.info.run_id


def child_tags(parent_run_id: str, stage: str, pipeline_run_id: str) -> dict[str, str]:
    """The tags that nest a stage's run under the parent and name the stage."""
    return {PARENT_TAG: parent_run_id, STAGE_TAG: stage, PIPELINE_RUN_TAG: pipeline_run_id}


def stage_child_run(client, experiment_id: str, parent_run_id: str, stage: str, pipeline_run_id: str,
                    run_name: str = "") -> str:
    """The id of `stage`'s run under the parent: an earlier attempt's, else a new one."""
    run = _find_or_create(client, experiment_id,
                          f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{STAGE_TAG}` = '{_quoted(stage)}'",
                          run_name or stage, child_tags(parent_run_id, stage, pipeline_run_id))
    return run.info.run_id


def finish_parent(client, parent_run_id: str) -> None:
    """Mark the parent run FINISHED (the last stage's work); a run KFP's MLflow integration made is left to it.

    Told apart by its `trainflow.kind` tag, which only a parent made here carries: MLflow's end_run
    removes MLFLOW_RUN_ID from the environment, so the variable cannot say it any more.
    """
    if client.get_run(parent_run_id).data.tags.get(KIND_TAG) == PIPELINE_KIND:
        client.set_terminated(parent_run_id, "FINISHED")


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


@contextlib.contextmanager
def stage_run(pipeline_run_id: str, stage: str) -> Iterator[tuple[Any, str] | None]:
    """(client, child run id) for a stage's record in the pipeline's parent run, or None when there is none to make.

    None without MLFLOW_TRACKING_URI or a pipeline run id, and (after one warning line) when the store
    does not answer. The child run is marked FINISHED when the block ends, FAILED when it raises.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not pipeline_run_id:
        yield None
        return
    from trainflow.errors import UserFacingError
    from trainflow.redaction import redact_text, uri_with_environment_credentials
    from trainflow.registry.tracking import connect, ensure_experiment

    opened, problem = None, ""
    try:
        tracking_uri = uri_with_environment_credentials(uri)
        client = connect(tracking_uri, tries=STAGE_CONNECT_TRIES, say_waits=False)  # one warning line below says it
        experiment_id = ensure_experiment(client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
                                          tracking_uri)
        parent = pipeline_parent_run(client, experiment_id, pipeline_run_id)
        child = stage_child_run(client, experiment_id, parent, stage, pipeline_run_id)
        client.update_run(child, status="RUNNING")  # a retry of a FAILED attempt runs again
        opened = (client, child)
    except UserFacingError as error:
        problem = str(error)
    except Exception as error:  # the store answered but refused: the record is lost, the stage's result is not
        problem = " ".join(str(error).split())[:300]
    if opened is None:
        print(f"{stage}: warning: not recorded in MLflow: {redact_text(problem)}", file=sys.stderr, flush=True)
        yield None
        return
    status = "FAILED"
    try:
        yield client, child
        status = "FINISHED"
    finally:
        try:
            client.set_terminated(child, status)
        except Exception as error:  # the run's status is a nicety; the stage's outcome stands
            print(f"{stage}: warning: MLflow run {child} not marked {status}: {redact_text(str(error))[:300]}",
                  file=sys.stderr, flush=True)


@contextlib.contextmanager
def active_stage_run(pipeline_run_id: str, stage: str) -> Iterator[tuple[Any, str] | None]:
    """`stage_run`, with the child run made MLflow's active run: fluent calls in this thread (the training
    engine's mlflow.log_metrics, trainflow.training.training_log) land in it."""
    with stage_run(pipeline_run_id, stage) as tracked:
        if tracked is None:
            yield None
            return
        import mlflow

        with mlflow.start_run(run_id=tracked[1]):
            yield tracked


def pods_environment(tracked: tuple[Any, str] | None) -> dict[str, str] | None:
    """MLFLOW_RUN_ID (the stage's child run) and the store it is in, for a training job's pods, whose fluent
    calls then record into it; None without a run. Credentials stay in the pods' Secret-backed variables:
    MLFLOW_TRACKING_URI holds none."""
    if tracked is None:
        return None
    return {KFP_RUN_ENV: tracked[1], "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}


def log_numbers(client, run_id: str, values: dict[str, Any], prefix: str = "") -> None:
    """The numeric values (not booleans) of `values` as metrics of the run, at step 0; a failure is one warning line."""
    import time

    from mlflow.entities import Metric

    from trainflow.redaction import redact_text

    now = int(time.time() * 1000)
    metrics = [Metric(f"{prefix}{k}", float(v), now, 0) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    try:
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
    except Exception as error:  # the record is lost, the stage's result is not
        print(f"warning: metrics not recorded in MLflow run {run_id}: {redact_text(' '.join(str(error).split()))[:300]}",
              file=sys.stderr, flush=True)
