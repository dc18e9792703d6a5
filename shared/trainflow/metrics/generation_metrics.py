"""Metrics of generated images: FID, prompt accuracy, CLIP score (LPIPS, PSNR, SSIM: metrics.image_quality).

Each function computes a real number or raises; the score stage turns a
missing optional model into a 'skipped' entry with its reason.
"""

from __future__ import annotations

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.metrics.frechet import frechet_distance_from_statistics


def check_informative(features: torch.Tensor, what: str) -> None:
    """Refuse features that cannot separate images (e.g. a collapsed or untrained extractor)."""
    spread = features.std(dim=0)
    if features.shape[0] < 2 or not torch.isfinite(features).all() or spread.max().item() < 1e-6:
        raise UserFacingError(
            f"the FID feature extractor gives constant or non-finite features for {what}; "
            "use a trained extractor (score.fid_features)"
        )


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D), in float64 by the robust Fréchet distance (trainflow.metrics.frechet).

    Same value as pytorch-fid's, and finite where pytorch-fid raises (fewer images than dimensions).
    Raises UserFacingError with fewer than 2 images on either side.
    """
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise UserFacingError("FID needs at least 2 real and 2 generated images; raise score.generation.max_prompts")
    real64, fake64 = real.double().numpy(), fake.double().numpy()
    sigma1 = np.atleast_2d(np.cov(real64, rowvar=False))
    sigma2 = np.atleast_2d(np.cov(fake64, rowvar=False))
    return frechet_distance_from_statistics(real64.mean(0), sigma1, fake64.mean(0), sigma2)


@torch.no_grad()
def prompt_hits(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Per generated image: 1.0 where the classifier reads the class its prompt named, else 0.0."""
    device = next(classifier.parameters()).device
    predictions = torch.cat([classifier(chunk.to(device)).argmax(dim=1).cpu() for chunk in images.split(batch_size)])
    return (predictions == labels).double()


def prompt_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Share of generated images the classifier reads as the class their prompt named."""
    return float(prompt_hits(classifier, images, labels, batch_size).mean().item())


def prompt_accuracy_interval(hits: torch.Tensor, seed: int, n_resamples: int = 1000) -> tuple[float, float]:
    """Seeded percentile-bootstrap 95% interval of prompt accuracy, resampling prompts."""
    from trainflow.evaluation.bootstrap import bootstrap_intervals

    return bootstrap_intervals(lambda hits: {"prompt_accuracy": float(hits.mean())}, {"hits": hits}, ["prompt_accuracy"],
                               n_resamples=n_resamples, seed=seed)["prompt_accuracy"]


def load_clip_score(model_folder, device: torch.device):
    """torchmetrics' CLIPScore over a CLIP model and processor from a local folder, built before any sampling.

    Raises UserFacingError naming the folder when it holds no loadable CLIP model
    or processor (so a broken folder fails in seconds, not after generation).
    """
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    try:
        model, processor = CLIPModel.from_pretrained(model_folder), CLIPProcessor.from_pretrained(model_folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserFacingError(f"CLIP model folder {model_folder} cannot be loaded ({first_line}); fix score.clip_model") from None
    return CLIPScore(model_name_or_path=lambda: (tensor_feature_clip(model), processor)).to(device)


def tensor_feature_clip(model):
    """Make `model.get_image_features` / `get_text_features` return the projected feature tensor.

    transformers 5 returns a ModelOutput (features in `pooler_output`) where
    torchmetrics 1.9's CLIPScore expects the tensor and fails with
    AttributeError; unwrapping changes no number. Returns the same model.
    """
    for name in ("get_image_features", "get_text_features"):
        method = getattr(model, name)

        def features(*args, _method=method, **kwargs):
            output = _method(*args, **kwargs)
            return output if isinstance(output, torch.Tensor) else output.pooler_output

        setattr(model, name, features)
    return model


@torch.no_grad()
def clip_score(metric, images: torch.Tensor, captions: list[str], batch_size: int = 32) -> float:
    """torchmetrics CLIPScore (100 * max(cos, 0), averaged over images) of images in [0, 1] against their captions.

    `metric` comes from load_clip_score; it is reset first, so one metric scores several models.
    Images go in as uint8, as saved PNGs would.
    """
    if len(captions) != images.shape[0]:
        raise UserFacingError(f"CLIP score needs one caption per image, got {len(captions)} captions for {images.shape[0]} images")
    metric.reset()
    device = metric.device
    for start in range(0, len(captions), batch_size):
        pixels = (images[start : start + batch_size].clamp(0, 1) * 255).round().to(torch.uint8).to(device)
        metric.update(list(pixels), captions[start : start + batch_size])
    return float(metric.compute().item())
