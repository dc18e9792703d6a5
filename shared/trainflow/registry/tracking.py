"""MLflow tracking and registry: where it lives by default and how a run is recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainflow.redaction import redact_text

LOCAL_STATE_DIR = ".trainflow"


def default_tracking_uri(state_dir: str | Path = LOCAL_STATE_DIR) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite database in the project-local state folder."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(state_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """Return the experiment id, creating it; a local SQLite store keeps artifacts beside the database."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):])
        artifact_location = (database.parent / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten_params(payload: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'train.learning_rate': '0.001', ...}, as MLflow params must be flat strings."""
    flat: dict[str, str] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = redact_text(str(value))[:6000]  # MLflow's param value limit
    return flat
