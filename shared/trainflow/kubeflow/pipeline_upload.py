"""Upload a compiled package as a pipeline version exactly once.

A version is named by the package's content hash (`<pipeline>-<hash12>`), so submitting an
unchanged package finds its version instead of adding a duplicate, and a changed config or code
adds one new version. The pipeline itself is created empty and every version, the first one
included, is uploaded under its hash name: `upload_pipeline` would name the first version after
the pipeline, and the next submit could not recognise it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainflow.kubeflow.pipeline_package import package_content_hash, package_pipeline_name, version_name_for

HTTP_CONFLICT = 409


@dataclass(frozen=True)
class PipelineVersionRef:
    pipeline_id: str
    version_id: str
    version_name: str
    newly_uploaded: bool


def equals_filter(key: str, value: str) -> str:
    """A KFP list filter (JSON of the v2beta1 Filter message) matching `key == value`."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


def _named(items, name: str) -> list:
    # The server's name filters may be case-insensitive; only an exact name is the same object.
    return [item for item in items or [] if name in (getattr(item, "name", None), item.display_name)]


def find_pipeline_id(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline named `name` (in `namespace`, or shared when None), or None."""
    response = client.list_pipelines(filter=equals_filter("display_name", name), namespace=namespace, page_size=100)
    matches = _named(response.pipelines, name)
    return matches[0].pipeline_id if matches else None


def find_version_id(client, pipeline_id: str, version_name: str) -> str | None:
    """The id of the version named `version_name` under `pipeline_id`, or None."""
    response = client.list_pipeline_versions(
        pipeline_id=pipeline_id, filter=equals_filter("display_name", version_name), page_size=100
    )
    matches = _named(response.pipeline_versions, version_name)
    return matches[0].pipeline_version_id if matches else None


def _create_pipeline(client, name: str, namespace: str | None) -> str:
    import kfp_server_api

    body = kfp_server_api.V2beta1Pipeline(
        name=name, display_name=name, namespace=namespace,
        description="Uploaded by trainflow; versions are named by their package's content hash.",
    )
    try:
        return client.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id
    except kfp_server_api.ApiException as exc:
        existing = find_pipeline_id(client, name, namespace) if exc.status == HTTP_CONFLICT else None
        if existing is None:
            raise
        return existing  # created by a concurrent submit between our lookup and our create


def ensure_pipeline_version(client, package: Path, namespace: str | None) -> PipelineVersionRef:
    """The pipeline version holding `package`, uploaded only if no version has its content hash.

    client: a connected kfp.Client. package: a compiled pipeline YAML. namespace: the owning
    namespace on multi-user deployments (the pipeline is then private to it), else None.
    Server errors propagate as kfp_server_api.ApiException (see kfp_connection).
    """
    import kfp_server_api

    pipeline_name = package_pipeline_name(package)
    version_name = version_name_for(package)
    pipeline_id = find_pipeline_id(client, pipeline_name, namespace) or _create_pipeline(client, pipeline_name, namespace)
    existing = find_version_id(client, pipeline_id, version_name)
    if existing is not None:
        return PipelineVersionRef(pipeline_id, existing, version_name, newly_uploaded=False)
    try:
        version = client.upload_pipeline_version(
            str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id,
            description=f"trainflow package sha256:{package_content_hash(package)}",
        )
    except kfp_server_api.ApiException as exc:
        existing = find_version_id(client, pipeline_id, version_name) if exc.status == HTTP_CONFLICT else None
        if existing is None:
            raise
        return PipelineVersionRef(pipeline_id, existing, version_name, newly_uploaded=False)
    return PipelineVersionRef(pipeline_id, version.pipeline_version_id, version_name, newly_uploaded=True)
