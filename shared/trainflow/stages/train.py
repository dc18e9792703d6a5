"""Stage 3: train the configured task on the cache; output the best checkpoint as the model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.training.run_training import TRAINING_RECORD, TrainRequest, run_training

__all__ = ["TRAINING_RECORD", "train"]


def train(
    task: str,
    cache_dir: str,
    model_config: dict[str, Any],
    config: dict[str, Any],
    seed: int,
    model: ArtifactLike,
    metrics: ArtifactLike,
    checkpoint_dir: str = "",
    logs: ArtifactLike | None = None,
) -> dict[str, Any]:
    """Train with validation, early stopping and checkpoints; resume from `checkpoint_dir` if it holds a run.

    Inputs: the build_cache output, the `model` and `train` sections, the run seed.
    `checkpoint_dir` (default: beside the model artifact) is where checkpoints live;
    a retried or re-run stage resumes from the newest complete one.
    Outputs: `model` (the best checkpoint, exported by the task; trainflow_training.json
    records history and why training stopped), `metrics`, and TensorBoard events in `logs`.
    """
    with timed_stage("train", model, metrics):
        checkpoints = Path(checkpoint_dir) if checkpoint_dir else Path(model.path).parent / "checkpoints"
        request = TrainRequest.model_validate({
            "task": task, "cache_dir": cache_dir, "model_config": model_config, "train_config": config, "seed": seed,
            "checkpoint_dir": str(checkpoints), "output_dir": model.path,
            "tensorboard_dir": logs.path if logs is not None else None,
        })
        summary = run_training(request)
        model.metadata.update({k: v for k, v in summary.items() if v is not None})
        metrics.metadata.update({k: summary[k] for k in ("best_value", "best_step", "best_epoch", "steps_run", "epochs_run")
                                 if summary.get(k) is not None})
        metrics.metadata["monitor"] = summary["monitor"]
        metrics.metadata["stop_reason"] = summary["stop_reason"]
    return summary
