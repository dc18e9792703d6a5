"""Stage 5: generate images for the test captions and score them (FID, KID, prompt accuracy, CLIP, LPIPS, PSNR, SSIM)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import ModelConfig, ScoreConfig, parse_section
from trainflow.data.manifest import read_manifest
from trainflow.data.snapshot_images import read_image, read_size
from trainflow.devices import pick_device
from trainflow.diffusion.generation import generate_images, load_generation_pipeline
from trainflow.diffusion.model_loading import resolve_pipeline_folder
from trainflow.diffusion.validation_samples import letterbox
from trainflow.errors import UserFacingError
from trainflow.metrics import generation_metrics as gm
from trainflow.metrics import image_quality as iq
from trainflow.metrics.feature_extractors import load_feature_extractor
from trainflow.metrics.image_features import cached_features, dataset_content_hash
from trainflow.metrics.kernel_distance import kernel_inception_distance
from trainflow.metrics.weights import hf_model_folder
from trainflow.models.image_classifier import load_classifier
from trainflow.registry.pipeline_run import log_numbers, stage_run
from trainflow.report.sample_grid import sample_grid_html

GENERATION_SEED_OFFSET = 3_000_003


def _load_reference(dataset_dir: Path, images: list[str]) -> torch.Tensor:
    """The test images in [0, 1], letterboxed onto one canvas when their sizes differ (ingest.buckets)."""
    arrays = [read_image(dataset_dir, rel) for rel in images]
    return letterbox([torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0 for array in arrays])


def score_generation(
    dataset_dir: str, model_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    metrics: ArtifactLike, report: ArtifactLike, pipeline_run_id: str = "",
) -> dict[str, Any]:
    """Generate one image per test caption with the fine-tuned model (and the base model) and score both.

    Required: the FID feature extractor's weights (MissingWeightsError names the file); KID
    (score.kid) uses the same features.
    Optional: prompt accuracy (needs labels and score.prompt_classifier), CLIP score
    (score.clip_model), LPIPS to the reference image and LPIPS diversity (backbone in
    TORCH_HOME, score.lpips); PSNR/SSIM to the reference image need no weights. Every
    scorer is built before any image is generated, so a missing or broken model is
    reported in seconds: required ones raise, optional ones are listed under `skipped`
    with the reason, never given a value. Generated images are quantised to uint8
    levels, as saved PNGs are, before any metric sees them.
    Outputs: `metrics` (numbers; base model values prefixed `base_`), `report` (HTML sample grid); with
    MLFLOW_TRACKING_URI and `pipeline_run_id` (the KFP run id) the numbers also go to the `score_generation`
    child run of the pipeline run's MLflow parent run (trainflow.registry.pipeline_run).
    """
    cfg: ScoreConfig = parse_section(ScoreConfig, config, "the score section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    with timed_stage("score_generation", metrics, report):
        device = pick_device(cfg.device)
        dataset_root = Path(dataset_dir)
        extractor = load_feature_extractor(cfg.fid_features, device)  # required: fail before generating
        entries = read_manifest(dataset_root, "test")
        if cfg.generation.max_prompts is not None and len(entries) > cfg.generation.max_prompts:
            entries = sorted(random.Random(seed).sample(entries, cfg.generation.max_prompts), key=lambda e: e.record_id)
        captions = [e.caption for e in entries]
        # Mixed sizes (ingest.buckets): each caption is drawn at its test image's size, and generated and real
        # images alike are scored letterboxed onto one canvas.
        real = _load_reference(dataset_root, [e.image for e in entries])
        sizes = [read_size(dataset_root, e.image) for e in entries]
        resolution = real.shape[-1]
        real_features = _reference_features(cfg, extractor, dataset_root, entries, real)
        gm.check_informative(real_features, "the real test images")
        scorers, skipped = _build_scorers(cfg, entries, real, device, seed)

        models = {"": Path(model_dir)}
        if cfg.compare_with_base:
            models["base_"] = resolve_pipeline_folder(model_cfg.base, model_cfg.revision)
        generated: dict[str, torch.Tensor] = {}
        for prefix, folder in models.items():
            pipe = load_generation_pipeline(folder, cfg.generation.sampler, device)
            generated[prefix] = iq.quantise_like_png(generate_images(
                pipe, captions, resolution, cfg.generation.num_inference_steps, cfg.generation.guidance_scale,
                cfg.generation.batch_size, seed + GENERATION_SEED_OFFSET, label="base model" if prefix else "fine-tuned model",
                sizes=sizes,
            ))
            del pipe

        values: dict[str, float] = {}
        for prefix, images in generated.items():
            fake_features = extractor(images)
            values[f"{prefix}fid"] = gm.frechet_distance(real_features, fake_features)
            if cfg.kid:
                kid = kernel_inception_distance(real_features, fake_features, seed=seed)
                values[f"{prefix}kid"], values[f"{prefix}kid_std"] = kid.mean, kid.std
            for name, scorer in scorers.items():
                values[f"{prefix}{name}"] = scorer(images)

        metrics.metadata.update(values)
        metrics.metadata["num_prompts"] = len(captions)
        report.metadata.update({"fid_features": extractor.name, "skipped": skipped, "num_prompts": len(captions)})
        atomic_write_text(report.path, sample_grid_html(
            captions[: cfg.grid_size], real[: cfg.grid_size],
            {("base model" if p else "fine-tuned"): imgs[: cfg.grid_size] for p, imgs in generated.items()},
            values, skipped, extractor.name,
        ))
        for name, value in sorted(values.items()):
            print(f"score: {name} = {value:.4f}")
        for name, reason in skipped.items():
            print(f"score: {name} skipped: {reason}")
        with stage_run(pipeline_run_id, "score_generation") as tracked:
            if tracked is not None:
                log_numbers(*tracked, {**values, "num_prompts": len(captions)})
    return {"metrics": values, "skipped": skipped, "fid_features": extractor.name}


def _reference_features(cfg: ScoreConfig, extractor, dataset_root: Path, entries, real: torch.Tensor) -> torch.Tensor:
    """The real test images' features, through score.reference_cache when set (keyed by extractor and image content)."""
    if not cfg.reference_cache:
        return extractor(real)
    content = dataset_content_hash([dataset_root / e.image for e in entries])
    return cached_features(content, extractor, cfg.reference_cache, lambda: extractor(real))


def _build_scorers(cfg: ScoreConfig, entries, real: torch.Tensor, device, seed: int) -> tuple[dict[str, Callable[[torch.Tensor], float]], dict[str, str]]:
    """Every optional metric's scorer, built now (before generating), and the reasons for those that cannot run."""
    scorers: dict[str, Callable[[torch.Tensor], float]] = {
        "psnr": lambda images: iq.psnr(images, real),
        "ssim": lambda images: iq.ssim(images, real),
    }
    skipped: dict[str, str] = {}
    makers = {
        "prompt_accuracy": lambda: _prompt_accuracy_scorer(cfg, entries, device, seed),
        "clip_score": lambda: _clip_scorer(cfg, [e.caption for e in entries], device),
        "lpips": lambda: _lpips_scorers(cfg, real, device, seed),
    }
    for name, make in makers.items():
        try:
            built = make()
        except UserFacingError as exc:  # missing or unreadable weights of an optional metric
            built = str(exc)
        if isinstance(built, str):
            for metric in (("lpips", "lpips_diversity") if name == "lpips" else (name,)):
                skipped[metric] = built
        elif isinstance(built, dict):
            scorers.update(built)
        else:
            scorers[name] = built
    return scorers, skipped


def _prompt_accuracy_scorer(cfg: ScoreConfig, entries, device, seed: int):
    if not cfg.prompt_classifier:
        return "no score.prompt_classifier configured"
    if any(e.label is None for e in entries):
        return "the test records have no labels (ingest.label_column)"
    classifier = load_classifier(cfg.prompt_classifier).to(device)
    labels = torch.tensor([e.label for e in entries])
    if labels.max().item() >= len(classifier.class_names):
        return f"labels go up to {labels.max().item()} but the classifier knows {len(classifier.class_names)} classes"
    scored: dict[int, tuple[float, float, float]] = {}  # per image batch: accuracy and its 95% interval

    def score(images: torch.Tensor) -> tuple[float, float, float]:
        if id(images) not in scored:
            hits = gm.prompt_hits(classifier, images, labels)
            scored[id(images)] = (float(hits.mean()), *gm.prompt_accuracy_interval(hits, seed))
        return scored[id(images)]

    return {"prompt_accuracy": lambda images: score(images)[0],
            "prompt_accuracy_ci_low": lambda images: score(images)[1],
            "prompt_accuracy_ci_high": lambda images: score(images)[2]}


def _clip_scorer(cfg: ScoreConfig, captions: list[str], device):
    if not cfg.clip_model:
        return "no score.clip_model configured"
    metric = gm.load_clip_score(hf_model_folder(cfg.clip_model), device)
    return lambda images: gm.clip_score(metric, images, captions)


def _lpips_scorers(cfg: ScoreConfig, real: torch.Tensor, device, seed: int):
    if not cfg.lpips:
        return "score.lpips is false"
    model = iq.load_lpips(device)
    return {
        "lpips": lambda images: iq.lpips_to_reference(model, images, real),
        "lpips_diversity": lambda images: iq.lpips_diversity(model, images, seed=seed),
    }
