"""The whole run config: one task, its sections, and the loader that checks it before anything starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from trainflow.config.evaluation import CacheConfig, EvaluateConfig, ScoreConfig
from trainflow.config.ingest import IngestConfig
from trainflow.config.model import ModelConfig
from trainflow.config.platform import PlatformConfig
from trainflow.config.registration import RegisterConfig
from trainflow.config.schema_base import Section, looks_like_local_path, parse_section
from trainflow.config.data_loading import TransformsConfig
from trainflow.config.training import DiffusionTrainingConfig, LossConfig, TrainConfig
from trainflow.errors import ConfigError

TASKS = ("text_to_image", "classification", "regression", "segmentation")

# What each task's validation logs, so early_stopping.monitor can be checked before training starts.
TASK_VALIDATION_METRICS = {
    "text_to_image": ("val_loss",),
    "classification": ("val_loss", "val_accuracy"),
    "regression": ("val_loss", "val_mse", "val_mae"),
    "segmentation": ("val_loss", "val_pixel_accuracy", "val_mean_iou"),
}
TRAIN_METRICS = ("train_loss",)


class RunConfig(Section):
    run_name: str = Field(min_length=1)
    task: Literal["text_to_image", "classification", "regression", "segmentation"] = "text_to_image"
    seed: int = 0
    ingest: IngestConfig
    model: ModelConfig
    cache: CacheConfig = CacheConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    score: ScoreConfig = ScoreConfig()
    # 'register' clashes with ABCMeta.register on a pydantic model, so the
    # attribute is `registration` while the YAML key stays `register`.
    registration: RegisterConfig = Field(alias="register")
    # How the compiled pipeline's pods are set up (volumes, secrets, node pools); local runs ignore it.
    platform: PlatformConfig = PlatformConfig()

    @model_validator(mode="after")
    def _fits_the_task(self) -> "RunConfig":
        check_task_fit(self.task, self.ingest, self.model, self.train)
        if self.task == "text_to_image" and any(gate.beat_champion for gate in self.registration.gates):
            raise ValueError("register.gates: beat_champion compares per-record predictions of supervised models; "
                             "for text_to_image use beat_base, min or max")
        return self


def check_task_fit(task: str, ingest: IngestConfig | None, model: ModelConfig | None, train: TrainConfig | None) -> None:
    """Raise ValueError (one sentence naming the field) when a section asks for what the task cannot do.

    Stages call this too with the sections they receive, so a config edited in
    the Kubeflow UI fails the same way as a local one.
    """
    if model is not None:
        if task == "text_to_image" and not model.base:
            raise ValueError("model.base: text_to_image needs a base diffusers pipeline (folder or hub id)")
        if task != "text_to_image" and not model.architecture:
            raise ValueError(f"model.architecture: task {task} needs an architecture (small_cnn, mlp, seg_cnn, resnet18, ...)")
    if ingest is not None:
        if task == "text_to_image" and not (ingest.dataset_dir or ingest.table or ingest.hdf5):
            raise ValueError("ingest.dataset_dir: text_to_image needs images with captions (an image folder, "
                             "a table with an image column, or an HDF5 file)")
        if task == "classification" and not (ingest.label_column or ingest.sklearn_dataset):
            raise ValueError("ingest.label_column: classification needs a label column")
        if task == "classification" and ingest.sklearn_dataset == "diabetes":
            raise ValueError("ingest.sklearn_dataset: diabetes has numeric targets; use task: regression")
        if task == "regression" and not (ingest.target_columns or ingest.sklearn_dataset == "diabetes"):
            raise ValueError("ingest.target_columns: regression needs at least one numeric target column (or sklearn_dataset: diabetes)")
        if task != "text_to_image":
            for field in ("buckets", "prior_preservation"):
                if getattr(ingest, field) is not None:
                    raise ValueError(f"ingest.{field}: applies to text_to_image only, not {task}")
            if ingest.alpha_mask:
                raise ValueError(f"ingest.alpha_mask: applies to text_to_image only, not {task}")
        if task == "segmentation" and not (ingest.mask_column or ingest.sklearn_dataset == "digits"):
            raise ValueError("ingest.mask_column: segmentation needs a mask column (or sklearn_dataset: digits, whose masks are the strokes)")
    if train is not None:
        monitor = train.early_stopping.monitor
        known = TASK_VALIDATION_METRICS[task] + TRAIN_METRICS
        if monitor not in known:
            raise ValueError(f"train.early_stopping.monitor: task {task} does not log {monitor!r}; choose one of {', '.join(known)}")
        if task != "text_to_image" and train.diffusion != DiffusionTrainingConfig():
            raise ValueError(f"train.diffusion: these options apply to text_to_image only, not {task}")
        if task == "text_to_image" and train.transforms != TransformsConfig():
            raise ValueError("train.transforms: text_to_image trains on cached latents, which pixel transforms cannot "
                             "reach; augment before caching (see README, Data loading)")
        if task == "text_to_image" and train.loss != LossConfig():
            raise ValueError("train.loss: text_to_image trains on the denoising objective; set diffusion options under train.diffusion")


def load_config(path: str | os.PathLike, check_local_paths: bool = True) -> RunConfig:
    """Read and validate a run YAML.

    Relative paths in the file are resolved against the current directory.
    With `check_local_paths`, the dataset folder and local model/classifier
    folders must exist (a cluster compile passes False: those are pod paths).
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file {config_path} does not exist; pass the path of a run YAML (see pipelines/configs/)")
    try:
        raw = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping of sections, got {type(raw).__name__}")
    config = parse_section(RunConfig, raw, str(config_path))
    if check_local_paths:
        _check_local_paths(config, config_path)
    return config


def _check_local_paths(config: RunConfig, config_path: Path) -> None:
    required = {"ingest.dataset_dir": config.ingest.dataset_dir, "ingest.table": config.ingest.table,
                "ingest.hdf5": config.ingest.hdf5,
                "ingest.prior_preservation.dataset_dir": (config.ingest.prior_preservation.dataset_dir
                                                          if config.ingest.prior_preservation else None),
                "model.weights_path": config.model.weights_path}
    if config.model.base and looks_like_local_path(config.model.base):
        required["model.base"] = config.model.base
    if config.task == "text_to_image":
        if config.score.fid_features.kind == "classifier" and config.score.fid_features.path:
            required["score.fid_features.path"] = config.score.fid_features.path
        if config.score.prompt_classifier:
            required["score.prompt_classifier"] = config.score.prompt_classifier
    for field, value in required.items():
        if value and not Path(value).expanduser().exists():
            raise ConfigError(
                f"invalid configuration in {config_path}: {field}: path {value!r} does not exist "
                f"(relative paths are resolved from {Path.cwd()}); fix the path or create it first"
            )
    if config.task == "text_to_image" and config.model.base and looks_like_local_path(config.model.base):
        from trainflow.diffusion.model_families import detect_family

        detect_family(Path(config.model.base).expanduser(), config.model.family)  # an SDXL config on an SD base, ...
