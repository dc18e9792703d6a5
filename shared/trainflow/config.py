"""The one typed schema for a run's YAML, and its loader.

Each pipeline stage receives only its own section (as a JSON dict, so it can
travel as a KFP parameter) and re-validates it with the matching model here,
which gives a cluster run the same clear errors as a local one.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainflow.errors import ConfigError


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class IngestConfig(_Section):
    """Where the image/caption dataset is and how to split it."""

    dataset_dir: str = Field(description="Dataset root: an imagefolder with metadata.jsonl, or <split>/images + captions.json.")
    image_column: str = "file_name"
    caption_column: str = "text"
    # Optional integer class label per record; used for prompt accuracy when present.
    label_column: str | None = None
    resolution: int = Field(512, ge=8, description="Images are resized (shorter side) and center-cropped to this size.")
    split: SplitFractions = SplitFractions()
    max_records: int | None = Field(None, ge=3, description="Use only this many valid records (quick runs and tests).")


class ModelConfig(_Section):
    base: str = Field(description="Base diffusers pipeline: a local folder or a Hugging Face hub id (resolved through HF_HOME).")
    revision: str | None = None


class CacheConfig(_Section):
    batch_size: int = Field(16, ge=1)
    storage_dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"


class EarlyStoppingConfig(_Section):
    patience: int = Field(5, ge=1, description="Epochs without an improvement of at least min_delta before stopping.")
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    lr_schedule: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_clip_norm: float = Field(1.0, ge=0, description="Max gradient norm; 0 turns clipping off.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    # Share of training captions replaced by the empty caption, so the model also
    # learns the unconditional prediction that classifier-free guidance needs.
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    num_workers: int = Field(0, ge=0)
    device: str = "auto"


class EvaluateConfig(_Section):
    batch_size: int = Field(32, ge=1)
    device: str = "auto"


class FeatureExtractorConfig(_Section):
    kind: Literal["inception", "classifier"] = "inception"
    # inception: optional explicit weights file (else TORCH_HOME's pytorch-fid file);
    # classifier: a trainflow classifier folder (config.json + model.safetensors).
    path: str | None = None

    @model_validator(mode="after")
    def _classifier_needs_path(self) -> "FeatureExtractorConfig":
        if self.kind == "classifier" and not self.path:
            raise ValueError("kind 'classifier' needs 'path' (a trainflow classifier folder)")
        return self


class GenerationConfig(_Section):
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=1.0)
    sampler: Literal["dpm_solver", "ddim", "ddpm"] = "dpm_solver"
    batch_size: int = Field(8, ge=1)
    max_prompts: int | None = Field(None, ge=2, description="Score on at most this many test captions.")


class ScoreConfig(_Section):
    generation: GenerationConfig = GenerationConfig()
    fid_features: FeatureExtractorConfig = FeatureExtractorConfig()
    # Optional metrics: when their weights are missing they are reported as skipped.
    clip_model: str | None = Field(None, description="CLIP model folder or hub id, e.g. openai/clip-vit-large-patch14.")
    lpips: bool = True
    prompt_classifier: str | None = Field(None, description="Classifier folder for prompt accuracy (needs labels in the data).")
    compare_with_base: bool = True
    grid_size: int = Field(8, ge=1, le=64, description="Captions shown in the HTML sample grid.")
    device: str = "auto"


class Gate(_Section):
    metric: str
    min: float | None = None
    max: float | None = None
    beat_base: bool = Field(False, description="Require the fine-tuned model to beat the base model on this metric.")

    @model_validator(mode="after")
    def _has_a_condition(self) -> "Gate":
        if self.min is None and self.max is None and not self.beat_base:
            raise ValueError(f"gate on {self.metric!r} needs at least one of min, max, beat_base")
        return self


class RegisterConfig(_Section):
    model_name: str = Field(min_length=1)
    experiment: str = "trainflow"
    # None: MLFLOW_TRACKING_URI if set, else the project-local SQLite store.
    tracking_uri: str | None = None
    gates: list[Gate] = []


class RunConfig(_Section):
    run_name: str = Field(min_length=1)
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


def section_payload(section: BaseModel) -> dict[str, Any]:
    """A section as a JSON dict for a KFP parameter.

    KFP parameters cannot hold None, so None values are left out; every
    nullable field defaults to None, so leaving them out loses nothing.
    """
    return section.model_dump(mode="json", exclude_none=True, by_alias=True)


def _describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        hint = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys here: {', '.join(sorted(known))}"
        return f"{location}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{location}: required field is missing"
    given = error.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{location}: {error['msg']}{shown}"


def _known_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in parent:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = next(
            (arg for arg in getattr(annotation, "__args__", (annotation,)) if isinstance(arg, type) and issubclass(arg, BaseModel)),
            annotation,
        )
    return list(getattr(current, "model_fields", {}))


def parse_section(model: type[_Section], payload: Any, where: str) -> Any:
    """Validate one section (or a whole config); raise ConfigError naming the field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e, model) for e in exc.errors())
        raise ConfigError(f"invalid configuration in {where}: {problems}") from None


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


def looks_like_local_path(value: str) -> bool:
    """Hub ids look like 'org/name'; anything absolute, dotted or existing is a path."""
    return value.startswith(("/", "./", "../", "~")) or os.path.exists(value)


def _check_local_paths(config: RunConfig, config_path: Path) -> None:
    required = {"ingest.dataset_dir": config.ingest.dataset_dir}
    if looks_like_local_path(config.model.base):
        required["model.base"] = config.model.base
    if config.score.fid_features.kind == "classifier" and config.score.fid_features.path:
        required["score.fid_features.path"] = config.score.fid_features.path
    if config.score.prompt_classifier:
        required["score.prompt_classifier"] = config.score.prompt_classifier
    for field, value in required.items():
        if not Path(value).expanduser().exists():
            raise ConfigError(
                f"invalid configuration in {config_path}: {field}: path {value!r} does not exist "
                f"(relative paths are resolved from {Path.cwd()}); fix the path or create it first"
            )
