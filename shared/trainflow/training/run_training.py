"""Train a task object from a cache into a model folder: the engine run that every training process makes.

The request is plain JSON (it travels to PyTorchJob/TrainJob pods as a file on the shared
workspace). `train_and_export` takes the task object the engine trains (built by the caller from
the task registry, see trainflow.stages.train.train_from_request), so nothing here knows a task.
Every process runs it; only rank 0 writes the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import Field

from trainflow.atomic_files import atomic_directory, atomic_write_json
from trainflow.config import ModelConfig, TrainConfig, section_payload
from trainflow.config.schema_base import Section
from trainflow.training.engine import Trainer, TrainingOutcome, ValidationHook
from trainflow.training.run_identity import RunIdentity
from trainflow.training.task import Task

TRAINING_RECORD = "trainflow_training.json"


class TrainRequest(Section):
    task: str
    cache_dir: str
    model_config_section: dict[str, Any] = Field(alias="model_config")
    train_config: dict[str, Any]
    seed: int = 0
    checkpoint_dir: str
    output_dir: str = Field(description="Where rank 0 writes the model folder (replaced atomically).")
    tensorboard_dir: str | None = None


def read_dataset_hash(cache_dir: Path) -> str:
    from trainflow.data.cache.attrs import read_cache_dataset_hash

    return read_cache_dataset_hash(cache_dir)


def train_and_export(task: Task, request: TrainRequest, cfg: TrainConfig, model_cfg: ModelConfig,
                     validation_hook: ValidationHook | None = None) -> dict[str, Any]:
    """Train `task` (the object the engine trains), export the best checkpoint to request.output_dir (rank 0).

    cfg and model_cfg are the request's sections, validated. Returns the summary facts.
    validation_hook: see `trainflow.training.engine.ValidationHook` (a tuning trial reports and is pruned there).
    """
    cache_dir = Path(request.cache_dir)
    identity = RunIdentity.build(request.task, request.seed, section_payload(model_cfg), section_payload(cfg),
                                 read_dataset_hash(cache_dir))
    trainer = Trainer(task, cfg, Path(request.checkpoint_dir), request.seed, identity,
                      tensorboard_dir=Path(request.tensorboard_dir) if request.tensorboard_dir else None,
                      validation_hook=validation_hook)
    try:
        outcome = trainer.fit()
        summary = training_summary(request.task, outcome, model_cfg)
        if trainer.info.is_main:
            with atomic_directory(request.output_dir) as staging:
                trainer.export_best(staging)
                atomic_write_json(staging / TRAINING_RECORD, {
                    **summary, "history": outcome.history, "train_config": section_payload(cfg),
                    "model_config": section_payload(model_cfg),
                    "best_checkpoint": str(outcome.best_checkpoint), "last_checkpoint": str(outcome.last_checkpoint),
                    "validation_prompts": trainer.prompt_log.record(),
                })
            print(f"train: {outcome.stop_reason}; best {outcome.monitor} {outcome.best_value:.5g} at step "
                  f"{outcome.best_step} (epoch {outcome.best_epoch})", flush=True)
    finally:
        trainer.close()  # Prometheus metrics are served until the model is exported
    return summary


def training_summary(task: str, outcome: TrainingOutcome, model_cfg: ModelConfig) -> dict[str, Any]:
    facts = {k: v for k, v in dataclasses.asdict(outcome).items()
             if k not in ("history", "best_checkpoint", "last_checkpoint", "resumed_from")}
    facts.update({"task": task, "resumed_from": outcome.resumed_from or ""})
    if model_cfg.base:
        facts["base_model"] = model_cfg.base
    return facts
