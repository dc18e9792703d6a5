"""Image feature extractors for FID: pytorch-fid's InceptionV3, or a trainflow classifier."""

from __future__ import annotations

import dataclasses
from typing import Callable
from unittest import mock

import torch

from trainflow.config import FeatureExtractorConfig
from trainflow.metrics.weights import fid_inception_weights
from trainflow.models.image_classifier import load_classifier


@dataclasses.dataclass
class FeatureExtractor:
    name: str
    dim: int
    extract: Callable[[torch.Tensor], torch.Tensor]  # float images in [0, 1], (N, 3, H, W) -> (N, dim)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self.extract(chunk).flatten(1).double().cpu() for chunk in images.split(batch_size)])


def _load_inception(weights_path: str | None, device: torch.device) -> FeatureExtractor:
    from pytorch_fid.inception import InceptionV3

    weights = fid_inception_weights(weights_path)
    # pytorch-fid fetches its weights through torch.hub (which may download and
    # unpickles without weights_only); hand it our file, loaded safely, instead.
    def load_local(*_args, **_kwargs):
        return torch.load(weights, map_location="cpu", weights_only=True)

    with mock.patch("pytorch_fid.inception.load_state_dict_from_url", load_local):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True,
                            use_fid_inception=True).eval().to(device)
    return FeatureExtractor("inception-v3", 2048, lambda x: model(x.to(device))[0])


def _load_classifier(path: str, device: torch.device) -> FeatureExtractor:
    classifier = load_classifier(path).to(device)
    name = f"{classifier.config.get('name', 'classifier')}"
    return FeatureExtractor(name, classifier.net.feature_dim, lambda x: classifier.features(x.to(device)))


def load_feature_extractor(cfg: FeatureExtractorConfig, device: torch.device) -> FeatureExtractor:
    """Raises MissingWeightsError (naming the file) when the extractor's weights are absent."""
    if cfg.kind == "inception":
        return _load_inception(cfg.path, device)
    assert cfg.path is not None  # enforced by the config schema
    return _load_classifier(cfg.path, device)
