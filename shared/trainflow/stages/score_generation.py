"""Stage 5: generate images for the test captions and score them (FID, prompt accuracy, CLIP, LPIPS)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_text
from trainflow.config import ModelConfig, ScoreConfig, parse_section
from trainflow.data.manifest import read_manifest
from trainflow.devices import pick_device
from trainflow.diffusion.generation import generate_images, load_generation_pipeline
from trainflow.diffusion.model_loading import resolve_pipeline_folder
from trainflow.errors import MissingWeightsError
from trainflow.metrics import generation_metrics as gm
from trainflow.metrics.feature_extractors import load_feature_extractor
from trainflow.metrics.weights import hf_model_folder, lpips_backbone_weights
from trainflow.models.image_classifier import load_classifier
from trainflow.report.sample_grid import sample_grid_html

GENERATION_SEED_OFFSET = 3_000_003


def _load_reference(dataset_dir: Path, images: list[str]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(dataset_dir / rel).convert("RGB"), dtype=np.uint8) for rel in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def score_generation(
    dataset_dir: str, model_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    metrics: ArtifactLike, report: ArtifactLike,
) -> dict[str, Any]:
    """Generate one image per test caption with the fine-tuned model (and the base model) and score both.

    Required: the FID feature extractor's weights (MissingWeightsError names the file).
    Optional: prompt accuracy (needs labels and score.prompt_classifier), CLIP score
    (score.clip_model), LPIPS diversity (backbone in TORCH_HOME); when one cannot be
    computed it is listed under `skipped` with the reason, never given a value.
    Outputs: `metrics` (numbers; base model values prefixed `base_`), `report` (HTML sample grid).
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
        real = _load_reference(dataset_root, [e.image for e in entries])
        resolution = real.shape[-1]
        real_features = extractor(real)
        gm.check_informative(real_features, "the real test images")

        models = {"": Path(model_dir)}
        if cfg.compare_with_base:
            models["base_"] = resolve_pipeline_folder(model_cfg.base, model_cfg.revision)
        generated: dict[str, torch.Tensor] = {}
        for prefix, folder in models.items():
            pipe = load_generation_pipeline(folder, cfg.generation.sampler, device)
            generated[prefix] = generate_images(
                pipe, captions, resolution, cfg.generation.num_inference_steps, cfg.generation.guidance_scale,
                cfg.generation.batch_size, seed + GENERATION_SEED_OFFSET, label="base model" if prefix else "fine-tuned model",
            )
            del pipe

        values: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for prefix, images in generated.items():
            values[f"{prefix}fid"] = gm.fid(extractor, real, images, real_features=real_features)
        _optional_metric("prompt_accuracy", generated, values, skipped, lambda: _prompt_accuracy_scorer(cfg, entries, device))
        _optional_metric("clip_score", generated, values, skipped, lambda: _clip_scorer(cfg, captions, device))
        _optional_metric("lpips_diversity", generated, values, skipped, lambda: _lpips_scorer(cfg, device, seed))

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
    return {"metrics": values, "skipped": skipped, "fid_features": extractor.name}


def _optional_metric(
    name: str, generated: dict[str, torch.Tensor], values: dict[str, float], skipped: dict[str, str],
    make_scorer: Callable[[], Callable[[torch.Tensor], float] | str],
) -> None:
    """Build the metric's scorer; a reason string (or missing weights) means 'skipped'."""
    try:
        scorer = make_scorer()
    except MissingWeightsError as exc:
        scorer = str(exc)
    if isinstance(scorer, str):
        skipped[name] = scorer
        return
    for prefix, images in generated.items():
        values[f"{prefix}{name}"] = scorer(images)


def _prompt_accuracy_scorer(cfg: ScoreConfig, entries, device):
    if not cfg.prompt_classifier:
        return "no score.prompt_classifier configured"
    if any(e.label is None for e in entries):
        return "the test records have no labels (ingest.label_column)"
    classifier = load_classifier(cfg.prompt_classifier).to(device)
    labels = torch.tensor([e.label for e in entries])
    if labels.max().item() >= len(classifier.class_names):
        return f"labels go up to {labels.max().item()} but the classifier knows {len(classifier.class_names)} classes"
    return lambda images: gm.prompt_accuracy(classifier, images, labels)


def _clip_scorer(cfg: ScoreConfig, captions: list[str], device):
    if not cfg.clip_model:
        return "no score.clip_model configured"
    folder = hf_model_folder(cfg.clip_model)
    return lambda images: gm.clip_score(folder, images, captions, device)


def _lpips_scorer(cfg: ScoreConfig, device, seed: int):
    if not cfg.lpips:
        return "score.lpips is false"
    lpips_backbone_weights("alex")
    return lambda images: gm.lpips_diversity(images, device, seed=seed)
