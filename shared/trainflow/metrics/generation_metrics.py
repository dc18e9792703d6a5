"""Metrics of generated images: FID, prompt accuracy, CLIP score, LPIPS diversity.

Each function computes a real number or raises; the score stage turns a
missing optional model into a 'skipped' entry with its reason.
"""

from __future__ import annotations

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.metrics.feature_extractors import FeatureExtractor
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


def fid(extractor: FeatureExtractor, real_images: torch.Tensor, fake_images: torch.Tensor, real_features: torch.Tensor | None = None) -> float:
    real = extractor(real_images) if real_features is None else real_features
    fake = extractor(fake_images)
    check_informative(real, "the real test images")
    return frechet_distance(real, fake)


@torch.no_grad()
def prompt_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Share of generated images the classifier reads as the class their prompt named."""
    device = next(classifier.parameters()).device
    predictions = torch.cat([classifier(chunk.to(device)).argmax(dim=1).cpu() for chunk in images.split(batch_size)])
    return float((predictions == labels).float().mean().item())


@torch.no_grad()
def clip_score(model_folder, images: torch.Tensor, captions: list[str], device: torch.device, batch_size: int = 32) -> float:
    """torchmetrics CLIPScore (100 * max(cos, 0), averaged) with a CLIP model from a local folder."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    metric = CLIPScore(model_name_or_path=lambda: (CLIPModel.from_pretrained(model_folder), CLIPProcessor.from_pretrained(model_folder))).to(device)
    for start in range(0, len(captions), batch_size):
        pixels = (images[start : start + batch_size] * 255).round().to(torch.uint8).to(device)
        metric.update(list(pixels), captions[start : start + batch_size])
    return float(metric.compute().item())


@torch.no_grad()
def lpips_diversity(images: torch.Tensor, device: torch.device, net: str = "alex", seed: int = 0) -> float:
    """Mean LPIPS distance over disjoint random pairs of generated images (higher = more diverse).

    A model that collapses to a few outputs scores near 0. Needs the backbone's
    ImageNet weights in TORCH_HOME (checked by the caller).
    """
    import lpips

    if images.shape[0] < 2:
        raise UserFacingError("LPIPS diversity needs at least 2 generated images")
    model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    pairs = order[: (len(order) // 2) * 2].view(-1, 2)
    scaled = images * 2 - 1
    if scaled.shape[-1] < 64:  # AlexNet's strided stem needs some room
        scaled = torch.nn.functional.interpolate(scaled, size=(64, 64), mode="bilinear", align_corners=False)
    distances = []
    for chunk in pairs.split(64):
        distances.append(model(scaled[chunk[:, 0]].to(device), scaled[chunk[:, 1]].to(device)).flatten().cpu())
    return float(torch.cat(distances).mean().item())
