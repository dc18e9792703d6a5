"""Text-to-image fine-tuning of a Stable Diffusion (1.x/2.x or XL) model: the task's definition (config checks,
cache, metrics), its test outputs (per-record denoising losses with fixed noise) and prediction (images for prompts).
What the engine trains, and how, is in trainflow.tasks.text_to_image_training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch.utils.data import default_collate

from trainflow.data.cache.latent_cache import CachedLatents, read_cache_attrs
from trainflow.diffusion.denoising_loss import fixed_noise_record_losses
from trainflow.diffusion.model_families import detect_family
from trainflow.tasks.definition import MetricSpec, RecordNeeds, Reference, TaskDefinition, TestRequest
from trainflow.tasks.text_to_image_training import DiffusionModel, TextToImageTask, check_cache_family


TEST_SEED_OFFSET = 2_000_003  # test noise differs from validation's, fixed per record, the same for every model


def autocast_for(precision: str, device: torch.device):
    """The training run's precision, so test losses are measured as validation losses were."""
    import contextlib

    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def mean_test_loss(test_loss: torch.Tensor) -> dict[str, Any]:
    """The metric over records: the mean per-record denoising loss (what the test_loss scalar is)."""
    return {"test_loss": float(test_loss.double().mean())}


class TextToImagePredictor:
    """A text-to-image model folder loaded back: images for prompts, or per-record test losses on a latent cache."""

    task = "text_to_image"
    names: list[str] = []

    def __init__(self, folder: Path, precision: str = "no", seed: int = 0) -> None:
        self.folder, self.precision, self.seed = Path(folder), precision, seed
        self._pipelines: dict[tuple[str, str], Any] = {}

    @torch.no_grad()
    def predict(self, prompts: list[str], resolution: int = 512, steps: int = 30, guidance_scale: float = 7.5,
                seed: int = 0, sampler: str = "dpm_solver", device: torch.device | None = None) -> torch.Tensor:
        """Float images in [0, 1], (N, 3, H, W); image i uses seed + i."""
        from trainflow.devices import pick_device
        from trainflow.diffusion.generation import generate_images, load_generation_pipeline

        key = (sampler, str(device or pick_device("auto")))
        if self._pipelines.get(key) is None:  # a served model answers many requests with one loaded pipeline
            self._pipelines = {key: load_generation_pipeline(self.folder, sampler, device or pick_device("auto"))}
        return generate_images(self._pipelines[key], prompts, resolution, steps, guidance_scale, len(prompts) or 1, seed)

    def record_outputs(self, cache_dir: Path, batch_size: int, device: torch.device) -> tuple[torch.Tensor, None]:
        from trainflow.diffusion.model_loading import load_trained_parts

        return test_losses(*load_trained_parts(self.folder), Path(cache_dir), self.folder, batch_size, device,
                           self.precision, self.seed), None


@torch.no_grad()
def test_losses(unet, text_encoders, cache_dir: Path, model_folder: Path, batch_size: int, device: torch.device,
                precision: str, seed: int, family: str = "auto") -> torch.Tensor:
    """Per-record test loss with the noise and timestep fixed by each record's index, identical for every model.

    Batches keep to one bucket (a bucketed cache holds several latent sizes); `model_folder` gives the scheduler
    and the family, checked against the family the cache was encoded for.
    """
    from trainflow.errors import UserFacingError
    from trainflow.training.bucketed_batches import bucket_batches
    from trainflow.training.task import move_to_device

    test_set = CachedLatents(cache_dir, "test")
    if len(test_set) == 0:
        raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
    attrs = read_cache_attrs(cache_dir)
    scaling = float(attrs["scaling_factor"])
    scheduler = DDPMScheduler.from_pretrained(Path(model_folder) / "scheduler")
    checked = check_cache_family(detect_family(Path(model_folder), family), attrs, Path(cache_dir))
    model = DiffusionModel(unet, *(text_encoders or [None]), family=checked).to(device).eval()
    losses = torch.zeros(len(test_set), dtype=torch.float64)
    with autocast_for(precision, device):
        for indices in bucket_batches(test_set, range(len(test_set)), batch_size):
            batch = move_to_device(default_collate([test_set[i] for i in indices]), device)
            states, added = model.batch_conditioning(batch)
            losses[indices] = fixed_noise_record_losses(
                model.unet, scheduler, batch["moments"], states, batch["index"], scaling, seed + TEST_SEED_OFFSET,
                added, batch.get("loss_mask")).double().cpu()
    return losses


class TextToImageDefinition(TaskDefinition):
    name = "text_to_image"
    description = "fine-tune a Stable-Diffusion-architecture model on captioned images"
    pipeline = "text-to-image"
    validation_metrics = ("val_loss", "val_prompt_accuracy", "val_clip_score")  # the last two: validation prompts
    headline_metrics = (MetricSpec("test_loss", "test denoising loss"),)
    summary_metrics = (
        MetricSpec("test_loss", "test denoising loss"),
        MetricSpec("fid", "FID ({fid_features} features)"),
        MetricSpec("kid", "KID (same features)"),
        MetricSpec("prompt_accuracy", "prompt accuracy"),
        MetricSpec("clip_score", "CLIP score"),
        MetricSpec("lpips", "LPIPS to the test image"),
        MetricSpec("lpips_diversity", "LPIPS diversity"),
    )
    output_names = ("test_loss", None)
    record_needs = RecordNeeds(required=frozenset({"caption"}), counts_caption_tokens=True)
    reference = Reference("base model", "base_", source="base", column="base")
    trained_label = "fine-tuned"
    generates_images = True

    def check_config(self, ingest, model, train) -> None:
        from trainflow.config import LossConfig
        from trainflow.config.data_loading import TransformsConfig

        if model is not None and not model.base:
            raise ValueError("model.base: text_to_image needs a base diffusers pipeline (folder or hub id)")
        if ingest is not None and not (ingest.dataset_dir or ingest.table or ingest.hdf5):
            raise ValueError("ingest.dataset_dir: text_to_image needs images with captions (an image folder, "
                             "a table with an image column, or an HDF5 file)")
        super().check_config(ingest, model, train)
        if train is not None:
            from trainflow.diffusion.validation_prompts import check_prompt_monitor

            check_prompt_monitor(train)
        if train is not None and train.transforms != TransformsConfig():
            raise ValueError("train.transforms: text_to_image trains on cached latents, which pixel transforms cannot "
                             "reach; augment before caching (see README, Data loading)")
        if train is not None and train.loss != LossConfig():
            raise ValueError("train.loss: text_to_image trains on the denoising objective; set diffusion options under train.diffusion")

    def local_paths(self, config) -> dict[str, str]:
        score, paths = config.score, {}
        if score.fid_features.kind == "classifier" and score.fid_features.path:
            paths["score.fid_features.path"] = score.fid_features.path
        if score.prompt_classifier:
            paths["score.prompt_classifier"] = score.prompt_classifier
        if config.train.validation_prompt_scoring.prompt_classifier:
            paths["train.validation_prompt_scoring.prompt_classifier"] = config.train.validation_prompt_scoring.prompt_classifier
        if config.ingest.prior_preservation is not None:
            paths["ingest.prior_preservation.dataset_dir"] = config.ingest.prior_preservation.dataset_dir
        return paths

    def check_local_files(self, config) -> None:
        from trainflow.config import looks_like_local_path
        from trainflow.diffusion.model_families import detect_family
        from trainflow.diffusion.validation_prompts import check_prompt_classifier

        check_prompt_classifier(config.train)

        if config.model.base and looks_like_local_path(config.model.base):
            detect_family(Path(config.model.base).expanduser(), config.model.family)  # an SDXL config on an SD base, ...

    def build_cache(self, dataset_dir: str, cache_dir: str, model_cfg, cache_cfg) -> dict[str, Any]:
        from trainflow.data.cache.latent_cache_build import build_latent_cache
        from trainflow.devices import pick_device

        # Keyed by dataset, encoders and dtype: reused from cache.cache_root, resumed shard by shard when killed.
        return build_latent_cache(dataset_dir, cache_dir, model_cfg, cache_cfg, pick_device(cache_cfg.device))

    def training_task(self, cache_dir: Path, model_cfg, train_cfg, seed: int) -> TextToImageTask:
        from trainflow.diffusion.model_loading import resolve_pipeline_folder

        return TextToImageTask(resolve_pipeline_folder(model_cfg.base, model_cfg.revision), cache_dir, train_cfg.diffusion,
                               seed, model_cfg.family, train_cfg)

    def test_outputs(self, request: TestRequest):
        """Per-record test losses of the fine-tuned (best) model, the base model and the last checkpoint."""
        from trainflow.config import TrainConfig, parse_section
        from trainflow.data.cache.attrs import read_cache_dataset_hash
        from trainflow.diffusion.model_loading import load_trained_parts, resolve_pipeline_folder
        from trainflow.evaluation.checkpoint_models import load_checkpoint_weights
        from trainflow.evaluation.record_outputs import RecordOutputs, test_record_ids

        cache_dir, model_dir, last = Path(request.cache_dir), Path(request.model_dir), request.last
        precision = request.record.get("mixed_precision", "no")

        def losses(unet, text_encoders) -> torch.Tensor:
            return test_losses(unet, text_encoders, cache_dir, model_dir, request.evaluate_cfg.batch_size, request.device,
                               precision, request.seed, request.model_cfg.family)

        base = resolve_pipeline_folder(request.model_cfg.base, request.model_cfg.revision)
        outputs = {"best": losses(*load_trained_parts(model_dir)), "base": losses(*load_trained_parts(base))}
        if last.checkpoint is not None:
            train_cfg = parse_section(TrainConfig, request.record["train_config"], "the training record's train section")
            try:
                model = load_checkpoint_weights(
                    self.training_task(cache_dir, request.model_cfg, train_cfg, request.seed).build_model(), last.checkpoint)
                outputs["last"] = losses(model.unet, model.text_encoders)
            except ValueError as error:
                last.reason, last.checkpoint = f"the last checkpoint does not fit the model ({error})", None
        return RecordOutputs(self.name, [], None, outputs, test_record_ids(cache_dir), read_cache_dataset_hash(cache_dir))

    def metric_function(self, names: list[str]):
        return mean_test_loss

    def report_section(self, scored, results: dict[str, Any]) -> str:
        from trainflow.report.evaluation_sections import text_to_image_section

        return text_to_image_section(results)

    def load_for_prediction(self, folder: Path) -> TextToImagePredictor:
        from trainflow.errors import UserFacingError

        if not (Path(folder) / "model_index.json").is_file():
            raise UserFacingError(f"{folder} is not a text-to-image model folder (no model_index.json); point at the "
                                  "train stage's model output or a registered text-to-image version")
        return TextToImagePredictor(folder)

    def serving_schema(self, folder: Path):
        from trainflow.tasks.text_to_image_serving import text_to_image_schema

        return text_to_image_schema(folder)

    def serve(self, predictor: TextToImagePredictor, model_input: Any, params: dict[str, Any]):
        from trainflow.tasks.text_to_image_serving import serve_prompts, text_to_image_schema

        return serve_prompts(predictor, model_input, params, text_to_image_schema(predictor.folder).params)


TASK = TextToImageDefinition()
