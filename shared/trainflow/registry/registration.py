"""Registering a candidate, idempotently: one MLflow run, one logged model and at most one version per key.

The key is the KFP run id and the task (`trainflow.registration_key`, a run tag set when the run is
created). Each step first looks for what an earlier attempt of the same key did, so a retry after a
crash at any point finishes the work instead of repeating it:
  1. the run (found by the key tag, else created with it);
  2. the decision (gates, champion comparison, promotion), saved as the run's `registration.json`
     before anything depends on it, so a retry does not decide again against a moved champion;
  3. the MLflow Model (found by the run's `trainflow.logged_model_id` tag or as a READY logged model
     of the run, else logged);
  4. the version (found by run id, else created);
  5. the aliases and the version's decision tag (setting them again is harmless);
  6. the run marked `trainflow.registration: complete` and FINISHED.
Without a key (a local run) every call registers anew.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from trainflow.config import RegisterConfig
from trainflow.registry.gates import ChampionEvidence

KEY_TAG = "trainflow.registration_key"
STATE_TAG = "trainflow.registration"
LOGGED_MODEL_TAG = "trainflow.logged_model_id"
DECISION_FILE = "registration.json"


def registration_key(pipeline_run_id: str, task: str) -> str | None:
    """What one pipeline run's registration of one task is known by; None without a run id (nothing to resume)."""
    return f"{pipeline_run_id}/{task}" if pipeline_run_id else None


def open_run(client, experiment_id: str, key: str | None, run_name: str, tags: dict[str, str] | None = None):
    """The run an earlier attempt with `key` created, else a new one carrying the key and `tags`
    (trainflow.registry.pipeline_run.child_tags: nested under the pipeline's parent run)."""
    if key:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0]
    return client.create_run(experiment_id, run_name=run_name, tags={**(tags or {}), **({KEY_TAG: key} if key else {})})


def saved_decision(client, run_id: str, scratch: Path) -> dict[str, Any] | None:
    """The decision an earlier attempt saved in this run, or None."""
    if DECISION_FILE not in {entry.path for entry in client.list_artifacts(run_id)}:
        return None
    return json.loads(Path(client.download_artifacts(run_id, DECISION_FILE, str(scratch))).read_text())


def record_decision(client, run_id: str, decision: dict[str, Any], params: dict[str, str], metrics: dict[str, float],
                    tags: dict[str, str]) -> None:
    """Params, metrics and tags on the run, then the decision file (the mark that this step is done)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    items = list(params.items())
    for start in range(0, max(len(items), 1), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_dict(run_id, decision, DECISION_FILE)


def logged_model(client, run, task: str, model_dir: str) -> tuple[str, str]:
    """(model id, model URI) of the run's MLflow Model: the one an earlier attempt finished logging, else a new one."""
    import mlflow

    from trainflow.registry.mlflow_model import log_served_model

    run_id = run.info.run_id
    known = run.data.tags.get(LOGGED_MODEL_TAG)
    candidates = [client.get_logged_model(known)] if known else client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    ready = [model for model in candidates if str(model.status) == "READY"]
    if ready:
        model_id = ready[0].model_id
    else:
        with mlflow.start_run(run_id=run_id):
            model_id = log_served_model(task, model_dir).model_id
    client.set_tag(run_id, LOGGED_MODEL_TAG, model_id)
    return model_id, f"models:/{model_id}"


def version_of_run(client, name: str, run_id: str, model: tuple[str, str], tags: dict[str, str], description: str) -> int:
    """The version registered from `run_id` (an earlier attempt's), else a new one."""
    from mlflow.exceptions import MlflowException

    existing = [int(v.version) for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")]
    if existing:
        return min(existing)
    try:
        client.create_registered_model(name, description="Registered by trainflow")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another registration created it first
            raise
    created = client.create_model_version(name, source=model[1], run_id=run_id, model_id=model[0], tags=tags,
                                          description=description)
    return int(created.version)


def finish(client, run_id: str) -> None:
    client.set_tag(run_id, STATE_TAG, "complete")
    client.set_terminated(run_id, "FINISHED")


def evidence_summary(evidence: ChampionEvidence | None) -> dict[str, Any] | None:
    return dataclasses.asdict(evidence) if evidence is not None else None


def evidence_from(summary: dict[str, Any] | None) -> ChampionEvidence | None:
    return ChampionEvidence(**summary) if summary else None


def champion_numbers(client, cfg: RegisterConfig) -> tuple[int | None, dict[str, float]]:
    """(champion version, the numbers its run recorded), or (None, {}) when there is no champion yet."""
    from trainflow.registry.champion import find_champion

    version = find_champion(client, cfg.model_name, cfg.champion_alias)
    if version is None:
        return None, {}
    return int(version.version), dict(client.get_run(version.run_id).data.metrics) if version.run_id else {}
