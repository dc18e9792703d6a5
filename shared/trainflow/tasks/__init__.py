"""One module per task; `build_task` picks the one a config names."""

from __future__ import annotations

from pathlib import Path

from trainflow.config import ModelConfig, TrainConfig
from trainflow.training.task import Task


def build_task(task: str, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> Task:
    if task == "text_to_image":
        from trainflow.diffusion.model_loading import resolve_pipeline_folder
        from trainflow.tasks.text_to_image import TextToImageTask

        assert model_cfg.base is not None  # checked by check_task_fit
        return TextToImageTask(resolve_pipeline_folder(model_cfg.base, model_cfg.revision), cache_dir, train_cfg.diffusion,
                               seed, model_cfg.family)
    from trainflow.tasks.supervised import SupervisedTask

    return SupervisedTask(task, cache_dir, model_cfg, train_cfg.loss, seed, train_cfg.transforms, train_cfg.data_loading)
