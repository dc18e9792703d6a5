"""The champion: the registered model version an MLflow alias points to, fetched and run on the candidate's test split.

The register stage logs every model folder at artifact path `model` and gives the
alias (register.champion_alias, default `champion`) to each version it registers,
so the champion is always a trainflow model folder. The candidate is never re-run:
its per-record outputs come from the evaluate stage's predictions artifact.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from trainflow.evaluation.paired import compare_arrays
from trainflow.evaluation.record_outputs import check_same_records, load_record_outputs
from trainflow.config import Gate, RegisterConfig
from trainflow.errors import UserFacingError
from trainflow.registry.gates import ChampionEvidence
from trainflow.redaction import redact_text

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def find_champion(client, model_name: str, alias: str):
    """The ModelVersion the alias points to, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        missing_model = error.error_code == "RESOURCE_DOES_NOT_EXIST"
        missing_alias = "alias" in str(error) and "not found" in str(error)
        if missing_model or missing_alias:
            return None
        raise


def download_model_version(version, tracking_uri: str, destination: Path) -> Path:
    """Download a registered version (its `source`) into `destination`; returns the trained model folder inside it."""
    import mlflow

    from trainflow.registry.mlflow_model import model_folder_in

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stage logs stay one line per fact
    return model_folder_in(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(destination),
                                                               tracking_uri=tracking_uri))


def resolve_model_reference(reference: str, tracking_uri: str, destination: Path) -> Path:
    """A local model folder for `reference`: a folder path, `models:/<name>@<alias>` or `models:/<name>/<version>`.

    Raises UserFacingError naming the reference when the folder or registry entry does not exist.
    """
    match = _MODEL_URI.match(reference)
    if not match:
        if reference.startswith("models:/"):
            raise UserFacingError(f"{reference!r} is not a model reference; write models:/<name>@<alias> or models:/<name>/<version>")
        if not Path(reference).is_dir():
            raise UserFacingError(f"model {reference!r} is neither a folder nor a models:/ reference")
        return Path(reference)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if match["alias"]:
            version = find_champion(client, match["name"], match["alias"])
            if version is None:
                raise UserFacingError(f"{reference}: registered model {match['name']!r} has no alias {match['alias']!r} in {redact_text(tracking_uri)}")
        else:
            version = client.get_model_version(match["name"], match["version"])
    except MlflowException as error:
        raise UserFacingError(f"{reference}: {error.message} (registry {redact_text(tracking_uri)})") from None
    return download_model_version(version, tracking_uri, destination)


def champion_evidence(
    cfg: RegisterConfig, gates: list[Gate], client, tracking_uri: str, task: str, predictions_dir: str | None,
    cache_dir: str | None, seed: int,
) -> ChampionEvidence | None:
    """Compare the candidate with the champion on each of `gates`' metrics; None when there are none.

    Any obstacle (a task without per-record outputs, missing inputs, a champion that cannot be
    fetched or run, a metric undefined on this split) becomes a reason in `unavailable`, which
    fails that gate: an unmade comparison never passes.
    """
    if not gates:
        return None
    version = find_champion(client, cfg.model_name, cfg.champion_alias)
    evidence = ChampionEvidence(cfg.model_name, cfg.champion_alias, int(version.version) if version else None)
    if version is None:
        return evidence
    try:
        evidence.comparisons = _compare_with(version, gates, cfg, tracking_uri, task, predictions_dir, cache_dir, seed)
    except UserFacingError as error:
        evidence.unavailable = {gate.metric: str(error) for gate in gates}
    for gate in gates:
        result = evidence.comparisons.get(gate.metric, {})
        if "skipped" in result:
            evidence.unavailable[gate.metric] = result.pop("skipped")
            evidence.comparisons.pop(gate.metric)
    return evidence


def _compare_with(version, gates: list[Gate], cfg: RegisterConfig, tracking_uri: str, task: str,
                  predictions_dir: str | None, cache_dir: str | None, seed: int) -> dict[str, dict[str, Any]]:
    from trainflow.devices import pick_device
    from trainflow.tasks import get_task

    definition = get_task(task)
    if not definition.compares_per_record:
        raise UserFacingError(f"beat_champion compares per-record test outputs, which trainflow does not keep for "
                              f"{task}; use beat_base, min or max")
    if not predictions_dir or not cache_dir:
        raise UserFacingError("the register stage received no predictions and cache inputs (wire the evaluate stage's "
                              "predictions and the build_cache stage's cache into register_model)")
    candidate = load_record_outputs(predictions_dir)
    check_same_records(candidate, cache_dir)
    with tempfile.TemporaryDirectory(prefix="trainflow-champion-") as scratch:
        try:
            folder = download_model_version(version, tracking_uri, Path(scratch))
        except Exception as error:  # any store failure means the same thing here: the champion cannot be fetched
            raise UserFacingError(f"the champion (version {version.version}) could not be downloaded from "
                                  f"{version.source}: {' '.join(str(error).split())[:300]}") from None
        try:
            predictor = definition.load_for_prediction(folder)
        except UserFacingError as error:
            raise UserFacingError(f"the champion (version {version.version}) cannot be loaded as a {task} model: {error}") from None
        if predictor.names != candidate.names:
            raise UserFacingError(f"the champion (version {version.version}) is a {task} model over "
                                  f"{predictor.names}, the candidate a {candidate.task} model over {candidate.names}")
        outputs, _ = predictor.record_outputs(Path(cache_dir), cfg.batch_size, pick_device(cfg.device))
    champion = candidate.arrays_of(outputs)  # same truth, the champion's outputs
    metric_fn = definition.metric_function(candidate.names)
    results = {}
    for gate in gates:
        try:
            results[gate.metric] = compare_arrays(metric_fn, candidate.arrays("best"), champion, gate.metric,
                                                  n_resamples=cfg.comparison_resamples, seed=seed, confidence=gate.confidence,
                                                  names=("the candidate", "the champion"))
        except UserFacingError as error:
            results[gate.metric] = {"skipped": str(error)}
    return results
