"""A convolutional autoencoder (optionally variational) and its model folder.

    <folder>/config.json         format, format_version, build (ConvAutoencoder's arguments), meta
    <folder>/model.safetensors   the weights

Images arrive as float in [0, 1], shape (N, C, H, W) with H and W multiples of 4; the decoder ends in
a sigmoid, so reconstructions are in [0, 1] too. The folder is self-contained: `load_autoencoder_folder`
needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from trainflow.atomic_files import atomic_directory
from trainflow.errors import MissingWeightsError, UserFacingError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER_FORMAT = "trainflow-autoencoder-model"
FOLDER_FORMAT_VERSION = 1


class ConvAutoencoder(nn.Module):
    """Two stride-2 convolutions down to a `latent_dim` code, two transposed convolutions back up.

    forward(images) -> (reconstructions, code mean, code log-variance or None). A variational model samples
    its code (reparameterised) in training mode and decodes the mean in eval mode.
    """

    def __init__(self, in_channels: int, resolution: int, width: int, latent_dim: int, variational: bool) -> None:
        super().__init__()
        if resolution % 4:
            raise UserFacingError(f"the autoencoder halves the images twice, so their size must be a multiple of 4, "
                                  f"not {resolution}; set ingest.resolution or train.transforms.resize to one")
        self.build_config = {"in_channels": in_channels, "resolution": resolution, "width": width,
                             "latent_dim": latent_dim, "variational": variational}
        self.variational = variational
        side = resolution // 4
        self.hidden_shape = (2 * width, side, side)
        hidden = 2 * width * side * side
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
            nn.Linear(hidden, 2 * latent_dim if variational else latent_dim),
        )
        self.decoder_input = nn.Linear(latent_dim, hidden)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_input(code).view(len(code), *self.hidden_shape))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        encoded = self.encoder(images)
        if not self.variational:
            return self.decode(encoded), encoded, None
        mean, log_variance = encoded.chunk(2, dim=1)
        code = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if self.training else mean
        return self.decode(code), mean, log_variance


def save_autoencoder_folder(model: nn.Module, folder: str | Path, meta: dict[str, Any]) -> None:
    """Write `folder` atomically: config.json (build arguments and `meta`) and model.safetensors."""
    network = getattr(model, "module", model)  # DDP-wrapped or not
    config = {"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION, "build": network.build_config,
              "meta": meta}
    with atomic_directory(folder) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_model(network, str(staging / WEIGHTS_FILE), metadata={"format": FOLDER_FORMAT})


def load_autoencoder_folder(folder: str | Path) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """(the model in eval mode, meta) from a folder `save_autoencoder_folder` wrote.

    Raises MissingWeightsError naming a missing file, UserFacingError for a folder written by something
    else or weights that do not fit the saved arguments.
    """
    root = Path(folder).expanduser()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise MissingWeightsError(f"model file {root / name} is missing; point at a folder written by trainflow's "
                                      "train stage for task autoencoder (config.json + model.safetensors)")
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserFacingError(f"{root / CONFIG_FILE} is not valid JSON ({error}); point at a folder written by trainflow") from None
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise UserFacingError(f"{root / CONFIG_FILE} does not describe an autoencoder (no format {FOLDER_FORMAT!r}); "
                              "point at a model folder from a trainflow autoencoder run")
    if config.get("format_version") != FOLDER_FORMAT_VERSION:
        raise UserFacingError(f"{root / CONFIG_FILE} has format_version {config.get('format_version')!r}; this trainflow "
                              f"reads version {FOLDER_FORMAT_VERSION}, so upgrade trainflow to load it")
    try:
        model = ConvAutoencoder(**config["build"])
        model.load_state_dict(load_file(str(root / WEIGHTS_FILE)), strict=True)
    except Exception as error:  # missing arguments, a corrupt header, wrong keys or shapes: this folder is not whole
        reason = " ".join(str(error).split())
        raise UserFacingError(f"{root / WEIGHTS_FILE} does not match {root / CONFIG_FILE} ({type(error).__name__}: "
                              f"{reason}); re-export the model") from None
    return model.eval(), dict(config.get("meta") or {})
