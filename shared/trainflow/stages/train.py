"""Stage 3: train the configured task on the cache, here or as a cluster job; output the best checkpoint as the model.

Without `train.distributed` the model trains in this process (`train_from_request`), with the
checkpoints on the shared workspace on a cluster (`<workspace>/runs/<KFP run id>/<task>/checkpoints`),
so a retried pod of the same run resumes from them and a new run starts fresh. With it, this step
launches a PyTorchJob/TrainJob (trainflow.kubeflow.train_launch) whose every process runs
`train_from_request` through `trainflow train-worker`, and waits for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.config import ModelConfig, TrainConfig, check_task_fit, parse_section
from trainflow.config.platform import PlatformConfig
from trainflow.errors import ConfigError
from trainflow.registry.pipeline_run import active_stage_run, log_numbers, pods_environment, stage_run
from trainflow.tasks import get_task
from trainflow.training.engine import ValidationHook
from trainflow.training.run_training import TRAINING_RECORD, TrainRequest, train_and_export

__all__ = ["TRAINING_RECORD", "TrainRequest", "train", "train_from_request"]
# Written by rank 0 beside the summary facts; not facts for artifact metadata.
_RECORD_ONLY_KEYS = ("history", "train_config", "model_config", "best_checkpoint", "last_checkpoint")


def train(
    task: str, cache_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    model: ArtifactLike, metrics: ArtifactLike, checkpoint_dir: str = "", logs: ArtifactLike | None = None,
    platform: dict[str, Any] | None = None, run_id: str = "", task_name: str = "",
    api_client: Any = None, launcher_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train with validation, early stopping and checkpoints; resume from `checkpoint_dir` if it holds a run.

    Inputs: the task, the build_cache output, the `model` and `train` sections, the run seed;
    `checkpoint_dir` (default: `<workspace>/runs/<run id>/<task>/checkpoints` on a cluster, beside the
    model artifact locally); the compiled `platform` section with `image` (None on a local run), the
    KFP run id and task name (they key the workspace folder and the job name); for tests an
    ApiClient and JobLauncher options.
    Outputs: `model` (the best checkpoint, exported by the task; trainflow_training.json records
    history and why training stopped), `metrics`, and TensorBoard events in `logs`; returns the summary.
    With train.logging.mlflow and MLFLOW_TRACKING_URI the step metrics and the summary's numbers go to the
    `train` child run of the pipeline run's MLflow parent run (trainflow.registry.pipeline_run).
    Failures: ConfigError for a distributed run without a compiled platform; the launcher's errors.
    """
    cfg: TrainConfig = parse_section(TrainConfig, config, "the train section")
    settings = parse_section(PlatformConfig, platform, "the platform section") if platform else None
    if settings is not None and not checkpoint_dir:
        from trainflow.kubeflow.train_launch import run_folder

        checkpoint_dir = str(run_folder(settings, run_id, task_name) / "checkpoints")
    if cfg.distributed is not None and (settings is None or not (platform or {}).get("image")):
        raise ConfigError("train.distributed launches a PyTorchJob/TrainJob and needs the shared workspace of a "
                          "compiled pipeline; remove it for a local run, or run on Kubeflow (trainflow submit).")
    with timed_stage("train", model, metrics):
        if cfg.distributed is None:
            checkpoints = Path(checkpoint_dir) if checkpoint_dir else Path(model.path).parent / "checkpoints"
            with _mlflow_steps(cfg, run_id) as tracked:
                summary = train_from_request(TrainRequest.model_validate({
                    "task": task, "cache_dir": cache_dir, "model_config": model_config, "train_config": config,
                    "seed": seed, "checkpoint_dir": str(checkpoints), "output_dir": model.path,
                    "tensorboard_dir": logs.path if logs is not None else None,
                }))
                if tracked is not None:
                    log_numbers(*tracked, {k: v for k, v in summary.items() if k not in _RECORD_ONLY_KEYS})
        else:
            from trainflow.kubeflow.train_launch import launch_training_job

            with _mlflow_steps(cfg, run_id, activate=False) as tracked:
                summary = launch_training_job(task, cache_dir, model_config, cfg, seed, Path(model.path),
                                              Path(logs.path) if logs is not None else None, checkpoint_dir, settings,
                                              platform["image"], run_id, task_name, api_client, launcher_options,
                                              mlflow_env=pods_environment(tracked))
                if tracked is not None:
                    log_numbers(*tracked, {k: v for k, v in summary.items() if k not in _RECORD_ONLY_KEYS})
        record_training_outcome(summary, model, metrics)
    return summary


@contextlib.contextmanager
def _mlflow_steps(cfg: TrainConfig, run_id: str, activate: bool = True) -> Iterator[tuple[Any, str] | None]:
    """With train.logging.mlflow: (client, id) of the pipeline run's `train` child run
    (trainflow.registry.pipeline_run), made MLflow's active run here so the engine's step metrics land in it
    (activate=False: a training job's pods get the id as MLFLOW_RUN_ID instead); None when there is none."""
    if not cfg.logging.mlflow:
        yield None
        return
    with (active_stage_run if activate else stage_run)(run_id, "train") as tracked:
        yield tracked


def train_from_request(request: TrainRequest, validation_hook: ValidationHook | None = None) -> dict[str, Any]:
    """Build the request's task object (trainflow.tasks) and train it: what every training process runs.

    The train stage calls it here; `trainflow train-worker` (each torchrun process of a
    PyTorchJob/TrainJob) and tuning trials call it with the same request. Returns the summary facts.
    Raises ConfigError naming the field when the sections do not fit the task.
    """
    cfg: TrainConfig = parse_section(TrainConfig, request.train_config, "the train section")
    model_cfg: ModelConfig = parse_section(ModelConfig, request.model_config_section, "the model section")
    check_task_fit(request.task, None, model_cfg, cfg)
    task = get_task(request.task).training_task(Path(request.cache_dir), model_cfg, cfg, request.seed)
    return train_and_export(task, request, cfg, model_cfg, validation_hook)


def record_training_outcome(summary: dict[str, Any], model: ArtifactLike, metrics: ArtifactLike) -> None:
    """Copy the training summary's facts into the model and metrics artifacts' metadata."""
    facts = {k: v for k, v in summary.items() if k not in _RECORD_ONLY_KEYS and v is not None}
    model.metadata.update(facts)
    metrics.metadata.update({k: facts[k] for k in ("best_value", "best_step", "best_epoch", "steps_run", "epochs_run")
                             if k in facts})
    metrics.metadata["monitor"] = facts.get("monitor")
    metrics.metadata["stop_reason"] = facts.get("stop_reason")
