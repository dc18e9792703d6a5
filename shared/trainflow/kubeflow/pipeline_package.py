"""Compile a run config into a KFP pipeline package, and name a package by its content."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import yaml

from trainflow.errors import UserFacingError

# --pipeline choice -> (module, pipeline function); each module also has pipeline_arguments(config)
# and may have pipeline_for(config), which builds the pipeline function for that config.
PIPELINES: dict[str, tuple[str, str]] = {
    "text-to-image": ("pipelines.text_to_image", "text_to_image_pipeline"),
    "supervised": ("pipelines.supervised", "supervised_pipeline"),
    "tuning": ("pipelines.tuning", "tuning_pipeline"),
    "cross-validation": ("pipelines.cross_validation", "cross_validation_pipeline"),
}


def default_pipeline(config: Any) -> str:
    """The pipeline that runs the config's task (its definition in trainflow.tasks says which)."""
    from trainflow.tasks import get_task

    return get_task(config.task).pipeline


def compile_pipeline_package(config: Any, pipeline: str, output: Path) -> Path:
    """Compile `pipeline` with `config` baked in as parameter defaults, so a run needs no arguments.

    config: a validated RunConfig. pipeline: a key of PIPELINES. output: the YAML file to write.
    Returns `output`. Raises UserFacingError for an unknown pipeline name or a pipeline module
    that this checkout does not have.
    """
    from kfp import compiler

    if pipeline not in PIPELINES:
        raise UserFacingError(f"unknown pipeline '{pipeline}'; choose one of: {', '.join(PIPELINES)}")
    module_name, function_name = PIPELINES[pipeline]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, module_name.split(".")[0]):
            raise  # the module exists but one of its own imports is missing: a bug, keep the traceback
        raise UserFacingError(
            f"pipeline '{pipeline}' is not available: module {module_name} is missing from this checkout; "
            f"pass --pipeline with one of the pipelines under pipelines/"
        ) from None
    from trainflow.redaction import has_credentials

    if has_credentials(config.registration.tracking_uri):  # a compiled pipeline is a file anyone with the UI reads
        raise UserFacingError("register.tracking_uri carries credentials, which a compiled pipeline would hold in "
                              "plain text; write the URI without them and put MLFLOW_TRACKING_USERNAME/PASSWORD (or "
                              "MLFLOW_TRACKING_TOKEN) in the Secret named by platform.mlflow_secret")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # A module with `pipeline_for(config)` builds its pipeline from the config's compile-time `platform` section.
    factory = getattr(module, "pipeline_for", None)
    pipeline_func = factory(config) if factory is not None else getattr(module, function_name)
    compiler.Compiler().compile(pipeline_func, str(output), pipeline_parameters=module.pipeline_arguments(config))
    return output


def _package_documents(package: Path) -> list[Any]:
    try:
        documents = [doc for doc in yaml.safe_load_all(Path(package).read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise UserFacingError(f"pipeline package {package} cannot be read as YAML: {exc}") from None
    if not documents or not isinstance(documents[0], dict):
        raise UserFacingError(f"pipeline package {package} holds no pipeline spec; compile it with `trainflow compile`")
    return documents


def package_content_hash(package: Path) -> str:
    """SHA-256 (hex) of the package's parsed YAML documents, canonically re-serialised.

    Hashing the parsed documents rather than the bytes is deliberate: the compiler's header
    comment lists dict defaults in an order that changes from one process to the next.
    """
    canonical = json.dumps(_package_documents(package), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def package_pipeline_name(package: Path) -> str:
    """The pipeline name compiled into the package (`pipelineInfo.name`); UserFacingError if absent."""
    name = _package_documents(package)[0].get("pipelineInfo", {}).get("name")
    if not name:
        raise UserFacingError(f"pipeline package {package} has no pipelineInfo.name; compile it with `trainflow compile`")
    return str(name)


def version_name_for(package: Path) -> str:
    """The pipeline version name for a package: `<pipeline name>-<first 12 hex digits of its content hash>`."""
    return f"{package_pipeline_name(package)}-{package_content_hash(package)[:12]}"
