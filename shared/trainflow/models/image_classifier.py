"""A small convolutional image classifier, saved as safetensors + config.json.

The demo trains one on scikit-learn's digits and uses it twice: its penultimate
features replace InceptionV3 for FID ("digits-FID"), and its predictions give
prompt accuracy. Any classifier saved in this format can play that role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainflow.atomic_files import atomic_directory
from trainflow.errors import MissingWeightsError, UserFacingError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class SmallConvNet(nn.Module):
    """Three conv stages and global average pooling; `features` is the 128-d embedding."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.body = nn.Sequential(
            stage(3, width), nn.MaxPool2d(2),
            stage(width, 2 * width), nn.MaxPool2d(2),
            stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, num_classes))
        self.feature_dim = 4 * width

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


class ImageClassifier(nn.Module):
    """A SmallConvNet plus the preprocessing it was trained with.

    Inputs are float images in [0, 1], shape (N, 3, H, W); they are resized to
    the training resolution and normalized here, so callers need not know.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.net = SmallConvNet(num_classes=len(config["class_names"]), width=config.get("width", 32))
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config["resolution"]
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(images))


def save_classifier(model: ImageClassifier, folder: str | Path) -> None:
    with atomic_directory(folder) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(model.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(staging / WEIGHTS_FILE))


def load_classifier(folder: str | Path) -> ImageClassifier:
    """Load a classifier folder; MissingWeightsError names the missing file."""
    root = Path(folder).expanduser()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise MissingWeightsError(
                f"classifier file {root / name} is missing; point the config at a folder written by "
                "trainflow (config.json + model.safetensors), e.g. run `trainflow demo-assets` for the digits one"
            )
    config = json.loads((root / CONFIG_FILE).read_text())
    if config.get("architecture") != "small_convnet":
        raise UserFacingError(f"{root / CONFIG_FILE}: unsupported architecture {config.get('architecture')!r}; expected 'small_convnet'")
    model = ImageClassifier(config)
    model.net.load_state_dict(load_file(str(root / WEIGHTS_FILE)))
    return model.eval()
