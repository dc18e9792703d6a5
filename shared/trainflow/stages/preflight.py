"""Preflight: find the user errors retries cannot fix before any task that retries starts.

KFP 2.17's retry policy (`PipelineTask.set_retry`: max count and backoff only) cannot skip
retries for an exit code, so a config or data error in a GPU task would be retried on a GPU
node. This step runs first, on a small CPU pod with no retries, and checks what the later
stages would otherwise find late: every config section against its schema and the task; the
dataset path and every local weights/classifier path as the pods see them (through the
mounted volumes); base-model and metric weights in HF_HOME/TORCH_HOME; the distributed
training spec; and that the workspace is writable. Anything found exits with the user-error
code, once. What it cannot see (a corrupt file deep in the data, a metric a gate names that
the run never computes) can still fail a later, retried task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import (CacheConfig, EvaluateConfig, IngestConfig, ModelConfig, RegisterConfig, ScoreConfig,
                              TrainConfig, check_task_fit, looks_like_local_path, parse_section)
from trainflow.config.platform import PlatformConfig
from trainflow.errors import ConfigError, MissingWeightsError, UserFacingError


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _sections(task: str, sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    models = {"ingest": IngestConfig, "model": ModelConfig, "cache": CacheConfig, "train": TrainConfig,
              "evaluate": EvaluateConfig, "score": ScoreConfig, "register": RegisterConfig}
    parsed = {name: parse_section(models[name], payload, f"the {name} section")
              for name, payload in sections.items() if payload is not None}
    check_task_fit(task, parsed.get("ingest"), parsed.get("model"), parsed.get("train"))
    return parsed


def _where(platform: PlatformConfig | None) -> str:
    if platform is None:
        return "on this machine"
    volumes = [f"{platform.dataset_pvc} at {platform.dataset_mount_path}"] if platform.dataset_pvc else []
    volumes += [f"{platform.weights_cache_pvc} at {platform.weights_cache_mount_path}"] if platform.weights_cache_pvc else []
    return "in the pod (mounted: " + (", ".join(volumes) or "no data volumes") + ")"


def _require_path(field: str, value: str | None, platform: PlatformConfig | None, folder: bool | None = None) -> str:
    path = Path(value).expanduser()
    exists = path.is_dir() if folder else path.is_file() if folder is False else path.exists()
    if not exists:
        kind = "folder" if folder else "file" if folder is False else "path"
        raise ConfigError(f"{field}: {kind} {value} does not exist {_where(platform)}; copy it onto a mounted volume "
                          "or fix the path.")
    return f"{field}: {value} found"


def _check_data(ingest: IngestConfig, platform: PlatformConfig | None) -> list[str]:
    if ingest.prior_preservation is not None:
        found = _require_path("ingest.prior_preservation.dataset_dir", ingest.prior_preservation.dataset_dir, platform,
                              folder=True)
        return [found, *_check_data(ingest.model_copy(update={"prior_preservation": None}), platform)]
    if ingest.dataset_dir:
        return [_require_path("ingest.dataset_dir", ingest.dataset_dir, platform, folder=True)]
    if ingest.table:
        return [_require_path("ingest.table", ingest.table, platform, folder=False)]
    return [f"ingest.sklearn_dataset: {ingest.sklearn_dataset} ships with scikit-learn"]


# The parts trainflow.diffusion.model_loading loads (its REQUIRED_PARTS; a test keeps the two equal),
# repeated here so that preflight does not import diffusers and transformers (seconds on a small pod).
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")  # what StableDiffusionXLPipeline folders hold beside those


def _check_base_model(model: ModelConfig, platform: PlatformConfig | None) -> list[str]:
    if looks_like_local_path(model.base):
        folder = Path(model.base).expanduser()
        if not (folder / "model_index.json").is_file():
            raise MissingWeightsError(f"model.base: {folder / 'model_index.json'} does not exist {_where(platform)}; "
                                      "model.base must be a diffusers pipeline folder (save_pretrained) or a hub id")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:  # look only: a download here would run on the preflight pod, which has no retries
            folder = Path(snapshot_download(model.base, revision=model.revision,
                                            allow_patterns=["model_index.json", *[f"{p}/*" for p in PIPELINE_PARTS + SDXL_PARTS]],
                                            local_files_only=True))
        except LocalEntryNotFoundError:
            if not _hub_offline():
                return [f"model.base: {model.base} is not in HF_HOME yet; build_cache will download it "
                        "(set HF_HUB_OFFLINE=1 to require a pre-seeded cache)"]
            home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise MissingWeightsError(
                f"model.base: '{model.base}' is not in the Hugging Face cache under HF_HOME={home} and HF_HUB_OFFLINE "
                f"is set; download it where the hub is reachable (`hf download {model.base}`) and copy the cache "
                "into the weights-cache volume, or set model.base to a local pipeline folder") from None
    if (folder / "model_index.json").is_file() and _pipeline_class(folder) is not None:
        from trainflow.diffusion.model_families import detect_family

        detect_family(folder, model.family)  # an unsupported pipeline, or another family than model.family says
    parts = PIPELINE_PARTS + (SDXL_PARTS if _pipeline_class(folder) == "StableDiffusionXLPipeline" else ())
    missing = [part for part in parts if not (folder / part).is_dir()]
    if missing:
        raise MissingWeightsError(f"model.base: {folder} lacks {', '.join(missing)}; a diffusers pipeline folder "
                                  f"needs {', '.join(parts)}")
    return [f"model.base: {model.base} found at {folder}"]


def _pipeline_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _check_supervised_weights(model: ModelConfig, platform: PlatformConfig | None) -> list[str]:
    if model.weights_path:
        return [_require_path("model.weights_path", model.weights_path, platform, folder=False)]
    if not model.pretrained:
        return []
    from trainflow.models.zoo import pretrained_weights_path

    try:
        path = pretrained_weights_path(model.architecture)
    except (ValueError, KeyError):
        raise ConfigError(f"model.pretrained: {model.architecture} has no torchvision weights; pretrained applies to "
                          "torchvision architectures only") from None
    if not path.is_file():
        raise MissingWeightsError(f"model.pretrained: {model.architecture} weights are not at {path} "
                                  f"{_where(platform)}; copy them into TORCH_HOME/hub/checkpoints first")
    return [f"model.pretrained: {path} found"]


def _check_score_weights(score: ScoreConfig, platform: PlatformConfig | None) -> list[str]:
    from trainflow.metrics.weights import fid_inception_weights

    found = []
    if score.fid_features.kind == "inception":
        found.append(f"FID InceptionV3 weights: {fid_inception_weights(score.fid_features.path)} found")
    else:
        found.append(_require_path("score.fid_features.path", score.fid_features.path, platform, folder=True))
    if score.prompt_classifier:
        found.append(_require_path("score.prompt_classifier", score.prompt_classifier, platform, folder=True))
    return found


def _check_workspace(platform: PlatformConfig, run_id: str) -> str:
    from trainflow.kubeflow.train_launch import run_folder

    folder = run_folder(platform, run_id, "preflight")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "writable", "ok\n")
    except OSError as exc:
        raise UserFacingError(f"the workspace volume {platform.workspace_pvc} at {platform.workspace_mount_path} is "
                              f"not writable ({exc.strerror}); give the pods' user (uid 1000) write access, e.g. "
                              "with a fsGroup or an initial chown.") from None
    return f"workspace {platform.workspace_mount_path} ({platform.workspace_pvc}) is writable"


def _check_distributed(train: TrainConfig, platform: PlatformConfig | None, image: str, run_id: str) -> list[str]:
    if train.distributed is None:
        return []
    if platform is None:
        raise ConfigError("train.distributed launches a PyTorchJob/TrainJob and needs a cluster; remove it for "
                          "a local run, or run on Kubeflow (trainflow submit).")
    from trainflow.kubeflow.train_launch import distributed_spec, run_folder

    request = run_folder(platform, run_id, "train") / "train-request.json"
    spec = distributed_spec(train.distributed, platform, image=image, request_path=request,
                            with_mlflow=train.logging.mlflow)
    gpus = f"{spec.gpus_per_node} GPU(s)" if spec.gpus_per_node else "CPU only"
    return [f"train.distributed: {spec.backend} with {spec.nodes} node(s), {gpus} each"]


def preflight(task: str, sections: dict[str, dict[str, Any] | None], report: ArtifactLike,
              platform: dict[str, Any] | None = None, run_id: str = "") -> list[str]:
    """Check the run before any retried task starts; write what was checked to `report` (Markdown).

    Inputs: the task; the config sections by name (ingest, model, cache, train, evaluate, score,
    register; None for one the pipeline lacks); the compiled platform section with `image`
    (None on a local run); the KFP run id. Output: the list of findings, also in the report.
    Failure: ConfigError / MissingWeightsError / UserFacingError naming the field or the volume.
    """
    settings = parse_section(PlatformConfig, platform, "the platform section") if platform else None
    with timed_stage("preflight", report):
        parsed = _sections(task, sections)
        findings = _check_data(parsed["ingest"], settings)
        # The task's own check (in _sections) has settled which model fields are set; check what they name.
        if parsed["model"].base:
            findings += _check_base_model(parsed["model"], settings)
        findings += _check_supervised_weights(parsed["model"], settings)
        if "score" in parsed:
            findings += _check_score_weights(parsed["score"], settings)
        findings += _check_distributed(parsed["train"], settings, (platform or {}).get("image", ""), run_id)
        if settings is not None:
            findings.append(_check_workspace(settings, run_id))
        atomic_write_text(report.path, "# Preflight\n\n" + "".join(f"- {line}\n" for line in findings))
        report.metadata["checks"] = len(findings)
    for line in findings:
        print(f"preflight: {line}", flush=True)
    return findings
