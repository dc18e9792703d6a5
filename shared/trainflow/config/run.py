"""The whole run config: one task, its sections, and the loader that checks it before anything starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from trainflow.config.evaluation import CacheConfig, EvaluateConfig, ScoreConfig
from trainflow.config.ingest import IngestConfig
from trainflow.config.model import ModelConfig
from trainflow.config.names import check_run_name
from trainflow.config.platform import PlatformConfig
from trainflow.config.registration import RegisterConfig
from trainflow.config.schema_base import Section, looks_like_local_path, parse_section, section_payload
from trainflow.config.training import TrainConfig
from trainflow.config.tuning import CrossValidationConfig, TuneConfig, check_search_space
from trainflow.config.yaml_reading import read_config_mapping, shown_text
from trainflow.errors import ConfigError



class RunConfig(Section):
    run_name: Annotated[str, AfterValidator(check_run_name)] = Field(description=(
        "Names the run's folders under the state directory, its MLflow run and its KFP runs: letters, digits, "
        "'.', '_' and '-', starting with a letter or digit, at most 100 characters."))
    task: str = Field("text_to_image", description="A task of trainflow.tasks.registry (text_to_image, classification, ...).")
    # numpy and Python seed generators from it, and numpy takes 0 .. 2**32 - 1.
    seed: int = Field(0, ge=0, le=2**32 - 1)
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
    # `trainflow tune` / `trainflow cross-validate` and their pipelines; a plain run ignores them.
    tune: TuneConfig | None = None
    cross_validation: CrossValidationConfig | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from trainflow.tasks.registry import TASK_MODULES, unknown_task_message

        if value not in TASK_MODULES:
            raise ValueError(unknown_task_message(value))
        return value

    @model_validator(mode="after")
    def _fits_the_task(self) -> "RunConfig":
        from trainflow.tasks import get_task

        task = get_task(self.task)
        task.check_task_fields(self.ingest, self.model, self.train)
        task.check_config(self.ingest, self.model, self.train)
        task.check_run_config(self)
        if self.cross_validation is not None and self.cross_validation.nested and self.tune is None:
            raise ValueError("cross_validation.nested: tunes inside each outer fold, so the config needs a tune section "
                             "(see README, Experiments)")
        if self.tune is not None:
            check_search_space(RunConfig, section_payload(self), self.tune, self.task, self.train.early_stopping.monitor)
        return self


def check_task_fit(task: str, ingest: IngestConfig | None, model: ModelConfig | None, train: TrainConfig | None) -> None:
    """Raise ConfigError (one sentence naming the field) when a section asks for what the task cannot do.

    Stages call this with the sections they receive, so a config edited in the Kubeflow UI fails
    the same way as a local one; the task's definition (trainflow.tasks) says what fits.
    """
    from trainflow.tasks import get_task

    try:
        definition = get_task(task)
        definition.check_task_fields(ingest, model, train)
        definition.check_config(ingest, model, train)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def load_config(path: str | os.PathLike, check_local_paths: bool = True) -> RunConfig:
    """Read and validate a run YAML.

    Relative paths in the file are resolved against the current directory.
    With `check_local_paths`, the dataset folder and local model/classifier
    folders must exist (a cluster compile passes False: those are pod paths).
    Failures: ConfigError, one line, for a file that is missing, over 1 MiB, not UTF-8, not YAML,
    uses aliases or repeats a key (trainflow.config.yaml_reading), and for any field the schema refuses.
    """
    config_path = Path(path)
    raw = read_config_mapping(config_path)
    config = parse_section(RunConfig, raw, shown_text(str(config_path), 300))
    if check_local_paths:
        _check_local_paths(config, config_path)
    return config


def _check_local_paths(config: RunConfig, config_path: Path) -> None:
    required = {"ingest.dataset_dir": config.ingest.dataset_dir, "ingest.table": config.ingest.table,
                "ingest.hdf5": config.ingest.hdf5,
                "model.weights_path": config.model.weights_path}
    if config.model.base and looks_like_local_path(config.model.base):
        required["model.base"] = config.model.base
    from trainflow.tasks import get_task

    task = get_task(config.task)
    required.update(task.local_paths(config))
    for field, value in required.items():
        if value and not Path(value).expanduser().exists():
            raise ConfigError(
                f"invalid configuration in {config_path}: {field}: path {value!r} does not exist "
                f"(relative paths are resolved from {Path.cwd()}); fix the path or create it first"
            )
    task.check_local_files(config)
