"""Stage 6: record the run in MLflow and register a model version if the gates pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import RegisterConfig, parse_section
from trainflow.mlflow_tracking import default_tracking_uri, ensure_experiment, flatten_params
from trainflow.registration_gates import failed_gates


def register_model(
    model_dir: str, dataset_metadata: dict[str, Any], eval_metrics: dict[str, Any], score_metrics: dict[str, Any],
    config: dict[str, Any], run_name: str, params: dict[str, Any], report: ArtifactLike,
) -> dict[str, Any]:
    """Log params, metrics, the model folder and the dataset hash to MLflow; register only past the gates.

    The MLflow run is recorded either way, so rejected candidates stay comparable.
    Outputs: `report` (Markdown) and its metadata: registered, model_name, model_version,
    reasons (why not), mlflow_run_id, tracking_uri.
    """
    import mlflow
    from mlflow import MlflowClient

    cfg: RegisterConfig = parse_section(RegisterConfig, config, "the register section")
    with timed_stage("register_model", report):
        numbers = {k: float(v) for k, v in {**eval_metrics, **score_metrics}.items() if not k.startswith("stage")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        reasons = failed_gates(cfg.gates, numbers)
        tracking_uri = cfg.tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        experiment_id = ensure_experiment(client, cfg.experiment, tracking_uri)
        dataset_hash = str(dataset_metadata.get("content_sha256", "unknown"))
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.log_params(flatten_params(params))
            mlflow.log_metrics(numbers)
            mlflow.set_tags({
                "trainflow.dataset_sha256": dataset_hash,
                "trainflow.stop_reason": str(eval_metrics.get("stop_reason", "")),
                "trainflow.gates": "passed" if not reasons else "failed: " + "; ".join(reasons),
            })
            mlflow.log_artifacts(model_dir, artifact_path="model")
            run_id = run.info.run_id
            artifact_uri = run.info.artifact_uri
        version = None
        if not reasons:
            if not _registered_model_exists(client, cfg.model_name):
                client.create_registered_model(cfg.model_name, description="Registered by trainflow")
            model_version = client.create_model_version(
                cfg.model_name, source=f"{artifact_uri}/model", run_id=run_id,
                tags={"dataset_sha256": dataset_hash}, description=f"trainflow run {run_name}",
            )
            version = int(model_version.version)
        outcome = {
            "registered": version is not None, "model_name": cfg.model_name, "model_version": version,
            "reasons": reasons, "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "dataset_sha256": dataset_hash,
        }
        report.metadata.update(outcome)
        atomic_write_text(report.path, _report_markdown(outcome, numbers))
        if version is not None:
            print(f"register: registered {cfg.model_name} version {version} (MLflow run {run_id})")
        else:
            print(f"register: not registered: {'; '.join(reasons)} (MLflow run {run_id} recorded)")
    return outcome


def _registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def _report_markdown(outcome: dict[str, Any], numbers: dict[str, float]) -> str:
    lines = ["# Model registration", ""]
    if outcome["registered"]:
        lines.append(f"Registered **{outcome['model_name']}** version **{outcome['model_version']}**.")
    else:
        lines.append(f"**Not registered** ({outcome['model_name']}):")
        lines += [f"- {reason}" for reason in outcome["reasons"]]
    lines += ["", f"MLflow run `{outcome['mlflow_run_id']}` at `{outcome['tracking_uri']}`; dataset sha256 `{outcome['dataset_sha256']}`", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(numbers.items())]
    return "\n".join(lines) + "\n"
