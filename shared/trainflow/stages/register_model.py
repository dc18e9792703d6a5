"""Stage 6: record the run in MLflow and register a model version if the gates pass."""

from __future__ import annotations

from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import RegisterConfig, parse_section
from trainflow.registry.tracking import default_tracking_uri, ensure_experiment, flatten_params
from trainflow.registry.gates import ChampionEvidence, failed_gates
from trainflow.redaction import redact, redact_text, uri_with_environment_credentials


def register_model(
    model_dir: str, dataset_metadata: dict[str, Any], eval_metrics: dict[str, Any], score_metrics: dict[str, Any],
    config: dict[str, Any], run_name: str, params: dict[str, Any], report: ArtifactLike,
    task: str = "text_to_image", predictions_dir: str | None = None, cache_dir: str | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Log params, metrics, the model folder and the dataset hash to MLflow; register only past the gates.

    The MLflow run is recorded either way, so rejected candidates stay comparable.
    beat_champion gates compare the evaluate stage's per-record outputs (`predictions_dir`)
    with the champion version run on the same test split (`cache_dir`); a registered version
    takes the champion alias. Outputs: `report` (Markdown) and its metadata: registered,
    model_name, model_version, reasons (why not), champion_version, mlflow_run_id, tracking_uri.
    """
    import mlflow
    from mlflow import MlflowClient

    from trainflow.registry.champion import champion_evidence
    from trainflow.report.registration_report import registration_markdown

    cfg: RegisterConfig = parse_section(RegisterConfig, config, "the register section")
    with timed_stage("register_model", report):
        numbers = {k: float(v) for k, v in {**eval_metrics, **score_metrics}.items() if not k.startswith("stage")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        # The client may need the credentials (a database URI); everything recorded gets the redacted URI.
        tracking_uri = uri_with_environment_credentials(cfg.tracking_uri or default_tracking_uri())
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        evidence = champion_evidence(cfg, client, tracking_uri, task, predictions_dir, cache_dir, seed)
        reasons = failed_gates(cfg.gates, numbers, evidence)
        dataset_hash = str(dataset_metadata.get("content_sha256", "unknown"))
        tags = {
            "trainflow.dataset_sha256": dataset_hash,
            "trainflow.stop_reason": str(eval_metrics.get("stop_reason", "")),
            "trainflow.gates": "passed" if not reasons else "failed: " + "; ".join(reasons),
            "trainflow.champion_version": _champion_tag(evidence),
        }
        run_id, model_info = _record_run(client, cfg, tracking_uri, run_name, params,
                                         {**numbers, **_champion_numbers(evidence)}, tags, model_dir, task)
        version = None if reasons else _register_version(client, cfg, run_id, model_info, dataset_hash, run_name)
        outcome = {
            "registered": version is not None, "model_name": cfg.model_name, "model_version": version,
            "reasons": redact(reasons), "mlflow_run_id": run_id, "tracking_uri": redact_text(tracking_uri),
            "dataset_sha256": dataset_hash,
            "champion_alias": cfg.champion_alias, "champion_version": evidence.version if evidence else None,
        }
        report.metadata.update(outcome)
        atomic_write_text(report.path, registration_markdown(outcome, numbers, evidence))
        if version is not None:
            print(f"register: registered {cfg.model_name} version {version} as '{cfg.champion_alias}' (MLflow run {run_id})")
        else:
            print(f"register: not registered: {'; '.join(reasons)} (MLflow run {run_id} recorded)")
    return {**outcome, "champion": _champion_summary(evidence)}


def _record_run(client, cfg: RegisterConfig, tracking_uri: str, run_name: str, params: dict[str, Any],
                metrics: dict[str, float], tags: dict[str, str], model_dir: str, task: str):
    """One MLflow run with the params, metrics, tags and the model folder logged as an MLflow Model; (run id, ModelInfo)."""
    import mlflow

    from trainflow.registry.mlflow_model import log_served_model

    experiment_id = ensure_experiment(client, cfg.experiment, tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(flatten_params(params))
        mlflow.log_metrics(metrics)
        mlflow.set_tags(redact(tags))
        return run.info.run_id, log_served_model(task, model_dir)


def _register_version(client, cfg: RegisterConfig, run_id: str, model_info, dataset_hash: str, run_name: str) -> int:
    """A new registry version of the run's logged MLflow Model, which takes the champion alias."""
    if not _registered_model_exists(client, cfg.model_name):
        client.create_registered_model(cfg.model_name, description="Registered by trainflow")
    model_version = client.create_model_version(
        cfg.model_name, source=model_info.model_uri, run_id=run_id, model_id=model_info.model_id,
        tags={"dataset_sha256": dataset_hash}, description=f"trainflow run {run_name}",
    )
    client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, str(model_version.version))
    return int(model_version.version)


def _champion_numbers(evidence: ChampionEvidence | None) -> dict[str, float]:
    """champion_<metric> and the improvement's interval, logged beside the candidate's own numbers."""
    numbers: dict[str, float] = {}
    for key, result in (evidence.comparisons if evidence else {}).items():
        numbers[f"champion_{key}"] = result["b"]
        numbers[f"vs_champion_{key}_improvement"] = result["improvement"]
        numbers[f"vs_champion_{key}_improvement_low"] = result["improvement_low"]
        numbers[f"vs_champion_{key}_improvement_high"] = result["improvement_high"]
    return numbers


def _champion_tag(evidence: ChampionEvidence | None) -> str:
    if evidence is None:
        return "not compared (no beat_champion gate)"
    return "none yet" if evidence.version is None else str(evidence.version)


def _champion_summary(evidence: ChampionEvidence | None) -> dict[str, Any] | None:
    if evidence is None:
        return None
    return {"version": evidence.version, "comparisons": evidence.comparisons, "unavailable": evidence.unavailable}


def _registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False
