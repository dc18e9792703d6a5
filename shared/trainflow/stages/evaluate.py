"""Stage 4: test-split denoising loss of the best checkpoint (and of the base model, same noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DConditionModel

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.config import EvaluateConfig, ModelConfig, parse_section
from trainflow.devices import pick_device
from trainflow.diffusion.denoising_loss import fixed_noise_loss
from trainflow.diffusion.latent_cache import CachedLatents, read_cache_attrs
from trainflow.diffusion.model_loading import resolve_pipeline_folder
from trainflow.errors import UserFacingError
from trainflow.stages.train import TRAINING_RECORD

TEST_SEED_OFFSET = 2_000_003


def read_training_record(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the model input must be the output of the train stage")
    return json.loads(path.read_text())


def evaluate(
    cache_dir: str, model_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    metrics: ArtifactLike,
) -> dict[str, Any]:
    """Score the train stage's model (its best epoch, never the last) on the test split.

    Both the fine-tuned and the base UNet see the same seed-fixed noise and
    timesteps, so `test_loss` and `base_test_loss` compare directly.
    Outputs: `metrics` with test_loss, base_test_loss, best_epoch, best_val_loss;
    its metadata also carries the stop reason.
    """
    cfg: EvaluateConfig = parse_section(EvaluateConfig, config, "the evaluate section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    with timed_stage("evaluate", metrics):
        record = read_training_record(model_dir)
        device = pick_device(cfg.device)
        test_set = CachedLatents(cache_dir, "test")
        if len(test_set) == 0:
            raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
        scaling = float(read_cache_attrs(cache_dir)["scaling_factor"])
        noise_scheduler = DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler")

        def test_loss(unet_folder: Path) -> float:
            unet = UNet2DConditionModel.from_pretrained(unet_folder).to(device).eval()
            return fixed_noise_loss(unet, noise_scheduler, test_set, scaling, device, cfg.batch_size, seed + TEST_SEED_OFFSET)

        results = {
            "test_loss": test_loss(Path(model_dir) / "unet"),
            "base_test_loss": test_loss(resolve_pipeline_folder(model_cfg.base, model_cfg.revision) / "unet"),
            "best_epoch": record["best_epoch"],
            "best_val_loss": record["best_val_loss"],
            "epochs_run": record["epochs_run"],
            "num_test": len(test_set),
        }
        metrics.metadata.update(results)
        metrics.metadata["stop_reason"] = record["stop_reason"]
        print(
            f"evaluate: test loss {results['test_loss']:.5f} (base model {results['base_test_loss']:.5f}) on "
            f"{len(test_set)} test records; best epoch {record['best_epoch']} of {record['epochs_run']} ({record['stop_reason']})"
        )
    return {**results, "stop_reason": record["stop_reason"]}
