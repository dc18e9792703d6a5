"""Where a registered version came from: its lineage, kept as tags on the MLflow run and on the model version.

Tags (all under `trainflow.lineage.`; a value that is not known is left out, never guessed):
    dataset_sha256         content hash of the ingested records (the ingest Dataset's metadata)
    split_manifest_sha256  sha256 of the Dataset's manifest.jsonl bytes (every kept record's hash and split)
    config_sha256          sha256 of the run config as canonical JSON (sorted keys, credentials redacted)
    trainflow_version      the installed trainflow distribution's version
    git_commit             TRAINFLOW_GIT_COMMIT (the images set it from their REVISION build argument), else
                           `git rev-parse HEAD` of the source checkout when it is one
    image                  TRAINFLOW_IMAGE: the image reference the pipeline was compiled with (a compiled
                           pipeline with a platform section sets it on the register and MLflow-logging tasks)
    image_digest           TRAINFLOW_IMAGE_DIGEST, else the sha256 digest of TRAINFLOW_IMAGE when that is
                           pinned by digest (name@sha256:...)
    kfp_run_id             the KFP run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    pipeline_name          the compiled pipeline's name

Kubernetes' downward API cannot hand a container its own image digest (status.containerStatuses is not
a fieldRef), so the digest comes from how the image was named: pin TRAINFLOW_IMAGE by digest at compile
time, or set TRAINFLOW_IMAGE_DIGEST (for example as an ENV in the image build).
The ingest Dataset is also logged as the run's MLflow dataset input (`log_dataset_input`).
Values are redacted (trainflow.redaction) and cut to MLflow's tag limit; computing them never fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from importlib import metadata as distribution_metadata
from pathlib import Path
from typing import Any

from trainflow.redaction import redact, redact_text

PREFIX = "trainflow.lineage."
GIT_COMMIT_VARIABLE = "TRAINFLOW_GIT_COMMIT"
IMAGE_VARIABLE = "TRAINFLOW_IMAGE"
IMAGE_DIGEST_VARIABLE = "TRAINFLOW_IMAGE_DIGEST"
MAX_TAG_VALUE = 5000  # below MLflow's run tag limit (8000)
MAX_DATASET_NAME = 500  # MLflow's dataset name limit
MAX_DATASET_DIGEST = 36  # MLflow's dataset digest limit: the hash's first 36 hex digits
DATASET_CONTEXT = "training"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON: sorted keys, no spaces, credentials replaced by ***."""
    canonical = json.dumps(redact(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_manifest_sha256(dataset_dir: str | None) -> str | None:
    """sha256 of the Dataset's manifest.jsonl bytes; None when there is no such file."""
    if not dataset_dir:
        return None
    path = Path(dataset_dir) / "manifest.jsonl"
    try:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def trainflow_version() -> str | None:
    try:
        return distribution_metadata.version("trainflow")
    except distribution_metadata.PackageNotFoundError:  # run from a source folder (PYTHONPATH)
        import trainflow

        return getattr(trainflow, "__version__", None)


def git_commit(source_dir: str | Path | None = None) -> str | None:
    """TRAINFLOW_GIT_COMMIT when set, else HEAD of the git checkout holding trainflow's source; None otherwise."""
    given = os.environ.get(GIT_COMMIT_VARIABLE, "").strip().lower()
    if _COMMIT.fullmatch(given):  # an image built without a revision says "unknown": look further
        return given
    folder = Path(source_dir) if source_dir else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _COMMIT.fullmatch(commit) else None


def image_reference() -> tuple[str | None, str | None]:
    """(TRAINFLOW_IMAGE, its digest): TRAINFLOW_IMAGE_DIGEST, else the digest the reference is pinned by."""
    image = os.environ.get(IMAGE_VARIABLE, "").strip() or None
    digest = os.environ.get(IMAGE_DIGEST_VARIABLE, "").strip() or None
    if digest is None and image and (found := _DIGEST.search(image.partition("@")[2])):
        digest = found.group(0)
    return image, digest


def compute_lineage(dataset_metadata: dict[str, Any], dataset_dir: str | None, config: dict[str, Any],
                    kfp_run_id: str = "", pipeline_name: str = "") -> dict[str, str]:
    """The lineage tags ({"trainflow.lineage.<key>": value}); unknown values are left out."""
    image, digest = image_reference()
    values = {
        "dataset_sha256": dataset_metadata.get("content_sha256"),
        "split_manifest_sha256": split_manifest_sha256(dataset_dir),
        "config_sha256": config_sha256(config),
        "trainflow_version": trainflow_version(),
        "git_commit": git_commit(),
        "image": image,
        "image_digest": digest,
        "kfp_run_id": kfp_run_id,
        "pipeline_name": pipeline_name,
    }
    return {PREFIX + key: _tag_value(value) for key, value in values.items() if value not in (None, "")}


def _tag_value(value: Any) -> str:
    return redact_text(" ".join(str(value).split()))[:MAX_TAG_VALUE]


def set_run_lineage(client, run_id: str, lineage: dict[str, str]) -> None:
    """The lineage tags on the run (setting them again, as a retry does, changes nothing)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in lineage.items()])


def set_version_lineage(client, name: str, version: int, lineage: dict[str, str]) -> None:
    for key, value in lineage.items():
        client.set_model_version_tag(name, str(version), key, value)


def dataset_input(dataset_metadata: dict[str, Any], dataset_uri: str | None):
    """The ingest Dataset as an MLflow DatasetInput: named by its source, digest = its content hash, source = where
    the snapshot is (credentials redacted); None without a content hash."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    content = str(dataset_metadata.get("content_sha256") or "")
    if not content:
        return None
    name = _tag_value(dataset_metadata.get("source") or "dataset")[:MAX_DATASET_NAME]
    location = redact_text(str(dataset_uri or dataset_metadata.get("source") or "unknown"))
    profile = {key: dataset_metadata[key] for key in ("num_records", "num_train", "num_val", "num_test", "kind")
               if key in dataset_metadata}
    entity = Dataset(name=name, digest=content[:MAX_DATASET_DIGEST], source_type=_source_type(location),
                     source=json.dumps({"uri": location}), profile=json.dumps({**profile, "content_sha256": content}))
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", DATASET_CONTEXT)])


def _source_type(uri: str) -> str:
    """MLflow's name for the kind of place (local, s3, gcs, ...), or "uri" for one it does not know (minio://)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve_dataset_source(uri)._get_source_type()
    except Exception:  # no resolver for this scheme: MLflow raises its own error type
        return "uri"


def log_dataset_input(client, run_id: str, dataset_metadata: dict[str, Any], dataset_uri: str | None) -> None:
    """Log the Dataset as the run's input once: a retry finds it there (same name and digest) and adds nothing."""
    entry = dataset_input(dataset_metadata, dataset_uri)
    if entry is None:
        return
    known = client.get_run(run_id).inputs
    for existing in (known.dataset_inputs if known else []):
        if (existing.dataset.name, existing.dataset.digest) == (entry.dataset.name, entry.dataset.digest):
            return
    client.log_inputs(run_id, datasets=[entry])


def read_lineage(client, name: str, version) -> dict[str, Any]:
    """What `trainflow lineage` shows: the version, its aliases, its run and the lineage tags and dataset inputs."""
    found = client.get_model_version(name, str(version))
    tags = {key[len(PREFIX):]: value for key, value in sorted((found.tags or {}).items()) if key.startswith(PREFIX)}
    datasets: list[dict[str, str]] = []
    if found.run_id:
        run = client.get_run(found.run_id)
        tags = {**{key[len(PREFIX):]: value for key, value in sorted(run.data.tags.items()) if key.startswith(PREFIX)},
                **tags}
        for entry in (run.inputs.dataset_inputs if run.inputs else []):
            source = entry.dataset.source
            try:
                source = json.loads(source).get("uri", source)
            except (ValueError, AttributeError):
                pass
            datasets.append({"name": redact_text(entry.dataset.name), "digest": entry.dataset.digest,
                             "source_type": entry.dataset.source_type, "source": redact_text(str(source))})
    return {"model_name": name, "version": int(found.version), "aliases": sorted(found.aliases or []),
            "run_id": found.run_id, "lineage": {key: redact_text(value) for key, value in tags.items()},
            "dataset_inputs": datasets}
