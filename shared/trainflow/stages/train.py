"""Stage 3: fine-tune the UNet on cached latents; output the best checkpoint as a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_directory, atomic_write_json
from trainflow.config import ModelConfig, TrainConfig, parse_section
from trainflow.diffusion.finetune_recipe import TextToImageFinetune
from trainflow.diffusion.model_loading import assemble_pipeline_folder, resolve_pipeline_folder

TRAINING_RECORD = "trainflow_training.json"


def train(
    cache_dir: str,
    model_config: dict[str, Any],
    config: dict[str, Any],
    seed: int,
    model: ArtifactLike,
    metrics: ArtifactLike,
    checkpoint_dir: str = "",
) -> dict[str, Any]:
    """Train, then write `model.path` as a complete diffusers pipeline whose UNet is the best epoch's.

    Inputs: the build_cache output, the `model` and `train` config sections, the run seed.
    `checkpoint_dir` holds best/ and last/ checkpoints (default: beside the model artifact).
    Outputs: `model` metadata says best_epoch and stop_reason; `metrics` holds the losses.
    The model folder also carries trainflow_training.json (history, config, stop reason).
    """
    cfg: TrainConfig = parse_section(TrainConfig, config, "the train section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    with timed_stage("train", model, metrics):
        base_folder = resolve_pipeline_folder(model_cfg.base, model_cfg.revision)
        checkpoints = Path(checkpoint_dir) if checkpoint_dir else Path(model.path).parent / "checkpoints"
        recipe = TextToImageFinetune(cfg, base_folder, Path(cache_dir), checkpoints, seed)
        recipe.setup()
        outcome = recipe.train()
        summary = {
            "best_epoch": outcome.best_epoch,
            "best_val_loss": outcome.best_val_loss,
            "epochs_run": outcome.epochs_run,
            "stop_reason": outcome.stop_reason,
            "mixed_precision": outcome.mixed_precision,
            "device": outcome.device,
            "base_model": model_cfg.base,
        }
        if recipe.accelerator.is_main_process:
            with atomic_directory(model.path) as staging:
                assemble_pipeline_folder(base_folder, outcome.best_checkpoint / "unet", staging)
                atomic_write_json(staging / TRAINING_RECORD, {**summary, "history": outcome.history, "train_config": cfg.model_dump(mode="json")})
        model.metadata.update(summary)
        metrics.metadata.update({
            "best_val_loss": outcome.best_val_loss,
            "best_epoch": outcome.best_epoch,
            "epochs_run": outcome.epochs_run,
            "final_train_loss": outcome.history[-1]["train_loss"],
        })
        print(f"train: {outcome.stop_reason}; best epoch {outcome.best_epoch} (val_loss {outcome.best_val_loss:.5f})")
    return summary
