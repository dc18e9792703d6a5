"""MLflow tracking and registry: where it lives by default and how a run is recorded."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from trainflow.redaction import redact_text
from trainflow.errors import ServiceUnavailableError

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


CONNECT_TRIES = 4
CONNECT_FIRST_WAIT_S = 1.0


def connect(tracking_uri: str, tries: int = CONNECT_TRIES, first_wait_s: float = CONNECT_FIRST_WAIT_S,
            say_waits: bool = True):
    """An MlflowClient for `tracking_uri` once the store answers (also made MLflow's current tracking URI);
    retried with doubling waits, each said in one stderr line unless `say_waits` is False (a caller for which
    the store is optional says the outcome once instead).

    Raises ServiceUnavailableError (one sentence, credentials redacted; the stage exits 3, which the retry
    policy retries) when it never answers, before
    anything was written, so an unreachable server leaves no half-registered version.
    """
    import mlflow
    from mlflow import MlflowClient

    # MLflow prints "View run <name> at: <tracking URI>/..." when a run ends: that URL carries any credentials.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # MLflow's HTTP client retries each request itself (7 times with long backoff by default); the waits here decide.
    previous = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    wait, last_error = first_wait_s, ""
    try:
        for attempt in range(tries):
            try:
                client.search_experiments(max_results=1)
                mlflow.set_tracking_uri(tracking_uri)  # MLflow's fluent API (log_model) writes to the same store
                return client
            except Exception as error:  # any failure to answer means the same: not reachable yet
                last_error = " ".join(str(error).split())[:200]
            if attempt < tries - 1:
                if say_waits:
                    print(f"trainflow: the MLflow tracking store {redact_text(tracking_uri)} did not answer; "
                          f"trying again in {wait:.0f} s (try {attempt + 2} of {tries})", file=sys.stderr, flush=True)
                time.sleep(wait)
                wait *= 2
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    raise ServiceUnavailableError(f"the MLflow tracking store {redact_text(tracking_uri)} did not answer after {tries} tries "
                          f"({redact_text(last_error)}); start it or fix register.tracking_uri / MLFLOW_TRACKING_URI, "
                          "then retry (nothing was registered)")
