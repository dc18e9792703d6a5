"""Supervised models by name: an MLP for tables, two small CNNs for images, any torchvision model.

`build_model` returns a `SupervisedModel`: the network plus the input
normalisation it expects (buffers in its state dict), so an exported model is
self-contained. Images arrive as float in [0, 1], shape (N, C, H, W); tables as
float (N, F). Pretrained torchvision weights come from disk only (TORCH_HOME or
`model.weights_path`), never from the network.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from trainflow.config.model import ModelConfig
from trainflow.errors import ConfigError, MissingWeightsError, UserFacingError

OWN_ARCHITECTURES = ("mlp", "small_cnn", "seg_cnn")


class MLP(nn.Sequential):
    """Linear → ReLU → Dropout per hidden size, then a linear head."""

    def __init__(self, in_features: int, hidden_sizes: list[int], num_outputs: int, dropout: float) -> None:
        layers: list[nn.Module] = []
        for width in hidden_sizes:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, num_outputs))


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv stages (width, 2·width, 4·width) with two poolings, global average pool, linear head.

    Two poolings leave 2×2 at an 8×8 input, so 8×8 (scikit-learn digits) is the smallest size.
    """

    def __init__(self, in_channels: int, num_outputs: int, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(in_channels, width), nn.MaxPool2d(2),
            _conv_block(width, 2 * width), nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_outputs))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


class SegCNN(nn.Module):
    """A three-level U-Net: per-pixel logits (N, K, H, W) at the input's H, W (8×8 and up, odd sizes too)."""

    def __init__(self, in_channels: int, num_outputs: int, width: int, dropout: float) -> None:
        super().__init__()
        self.encode1 = _conv_block(in_channels, width)
        self.encode2 = _conv_block(width, 2 * width)
        self.middle = _conv_block(2 * width, 4 * width)
        self.decode2 = _conv_block(4 * width + 2 * width, 2 * width)
        self.decode1 = _conv_block(2 * width + width, width)
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, num_outputs, 1))

    @staticmethod
    def _up_and_join(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Interpolating to the skip's exact size (not a fixed ×2) keeps odd input sizes working.
        return torch.cat([F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level1 = self.encode1(images)
        level2 = self.encode2(F.max_pool2d(level1, 2))
        bottom = self.middle(F.max_pool2d(level2, 2))
        up2 = self.decode2(self._up_and_join(bottom, level2))
        return self.head(self.decode1(self._up_and_join(up2, level1)))


class SupervisedModel(nn.Module):
    """A network plus its input normalisation (and resizing), so callers pass raw [0, 1] images or raw features.

    `build_config` holds every argument `build_model` needs to rebuild it (model_folder saves it).
    """

    def __init__(self, network: nn.Module, build_config: dict[str, Any], mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.build_config = build_config
        self.per_pixel: bool = build_config["per_pixel"]
        self.is_image_model = build_config["in_features"] is None
        self.resolution: int | None = build_config["resolution"]
        shape = (1, -1, 1, 1) if self.is_image_model else (1, -1)
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(shape))
        # torchvision networks take RGB; a grayscale input is repeated to three channels.
        self.repeat_to_rgb = self.is_image_model and build_config["architecture"] not in OWN_ARCHITECTURES \
            and build_config["in_channels"] == 1

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = (inputs - self.input_mean) / self.input_std
        size = tuple(inputs.shape[-2:])
        resize = self.is_image_model and self.resolution is not None and size != (self.resolution, self.resolution)
        if resize:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
        if self.repeat_to_rgb:
            x = x.expand(-1, 3, -1, -1)
        outputs = self.network(x)
        if isinstance(outputs, dict):  # torchvision segmentation models: {"out": ..., "aux": ...}
            outputs = outputs["out"]
        elif hasattr(outputs, "logits"):  # inception_v3 / googlenet in train mode return auxiliary logits too
            outputs = outputs.logits
        if resize and self.per_pixel:
            outputs = F.interpolate(outputs, size=size, mode="bilinear", align_corners=False)
        return outputs


def build_model(cfg: ModelConfig, *, per_pixel: bool = False, in_channels: int = 3, in_features: int | None = None, num_outputs: int,
                resolution: int | None = None, input_mean: list[float] | None = None,
                input_std: list[float] | None = None) -> SupervisedModel:
    """Build `cfg.architecture` with one output vector per record, or per pixel (`per_pixel`: segmentation).

    Tables: pass `in_features` (inputs (N, F)); images: `in_channels` (inputs (N, C, H, W) in [0, 1]),
    optionally `resolution` (inputs of another size are resized to it inside the model; segmentation
    logits are resized back). `num_outputs` is the number of classes, or of targets for regression.
    `input_mean`/`input_std` (one value per channel or feature) are applied inside the model; by
    default none, or the pretrained torchvision weights' own (ImageNet's). Returns a `SupervisedModel`
    whose output is logits (N, K), predictions (N, T) or per-pixel logits (N, K, H, W).
    Raises ConfigError naming model.architecture for an unknown name or one that does not fit the outputs
    or input kind, MissingWeightsError when pretrained weights are not on disk, UserFacingError when
    a weights file does not fit the architecture.
    """
    name = cfg.architecture
    if not name:
        raise ConfigError("model.architecture: required for a supervised task; use mlp, small_cnn, seg_cnn or a torchvision model name")
    width = in_features if in_features is not None else in_channels
    pretrained = cfg.pretrained or cfg.weights_path is not None
    if name in OWN_ARCHITECTURES:
        if pretrained:
            field = "model.pretrained" if cfg.pretrained else "model.weights_path"
            raise ConfigError(f"{field}: pretrained weights apply to torchvision architectures only, not {name}")
        network = _own_network(name, cfg, per_pixel, in_channels, in_features, num_outputs)
    else:
        network = _torchvision_network(name, cfg, per_pixel, in_channels, in_features, num_outputs)
        if pretrained:
            _load_pretrained(network, cfg, num_outputs)
            if input_mean is None and input_std is None:
                # Pretrained weights only mean something on inputs normalised as in their training
                # (grayscale, repeated to RGB inside, gets the channel average).
                transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
                input_mean, input_std = list(transforms.mean), list(transforms.std)
                if in_channels == 1:
                    input_mean, input_std = [sum(input_mean) / 3], [sum(input_std) / 3]
    mean = [0.0] * width if input_mean is None else [float(v) for v in input_mean]
    std = [1.0] * width if input_std is None else [float(v) for v in input_std]
    if len(mean) != width or len(std) != width or min(std) <= 0:
        raise UserFacingError(f"input normalisation needs {width} means and {width} positive standard deviations "
                              f"(one per {'feature' if in_features is not None else 'channel'}); got {mean} and {std}")
    build_config = {
        "architecture": name, "per_pixel": per_pixel, "in_channels": in_channels, "in_features": in_features,
        "num_outputs": num_outputs, "resolution": resolution, "input_mean": mean, "input_std": std,
        "hidden_sizes": list(cfg.hidden_sizes), "width": cfg.width, "dropout": cfg.dropout,
    }
    return SupervisedModel(network, build_config, mean, std)


def _own_network(name: str, cfg: ModelConfig, per_pixel: bool, in_channels: int, in_features: int | None,
                 num_outputs: int) -> nn.Module:
    if name == "mlp":
        if in_features is None:
            raise ConfigError("model.architecture: mlp takes tables (feature columns), not images; use small_cnn or a torchvision model")
        if per_pixel:
            raise ConfigError("model.architecture: mlp cannot segment; use seg_cnn or a torchvision segmentation model")
        return MLP(in_features, list(cfg.hidden_sizes), num_outputs, cfg.dropout)
    if in_features is not None:
        raise ConfigError(f"model.architecture: {name} takes images, not tables; use mlp for feature columns")
    if name == "small_cnn":
        if per_pixel:
            raise ConfigError("model.architecture: small_cnn gives one output per image; use seg_cnn for segmentation")
        return SmallCNN(in_channels, num_outputs, cfg.width, cfg.dropout)
    if not per_pixel:
        raise ConfigError("model.architecture: seg_cnn gives per-pixel logits; use small_cnn or mlp for one output per record")
    return SegCNN(in_channels, num_outputs, cfg.width, cfg.dropout)


def _torchvision_network(name: str, cfg: ModelConfig, per_pixel: bool, in_channels: int, in_features: int | None,
                         num_outputs: int) -> nn.Module:
    classifiers = set(torchvision.models.list_models(module=torchvision.models))
    segmenters = set(torchvision.models.list_models(module=torchvision.models.segmentation))
    every_name = set(torchvision.models.list_models())
    if name not in every_name:
        close = difflib.get_close_matches(name, sorted(every_name | set(OWN_ARCHITECTURES)), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "use mlp, small_cnn, seg_cnn or a name from torchvision.models.list_models()"
        raise ConfigError(f"model.architecture: unknown architecture {name!r}; {hint}")
    if name not in classifiers | segmenters:
        raise ConfigError(f"model.architecture: {name} is a torchvision detection/video/quantized model; "
                          "trainflow takes classification or segmentation models")
    if in_features is not None:
        raise ConfigError(f"model.architecture: {name} takes images, not tables; use mlp for feature columns")
    if per_pixel != (name in segmenters):
        wanted, outputs = (("a segmentation model such as fcn_resnet50 or seg_cnn", "per-pixel") if per_pixel
                           else ("a classification model such as resnet18 or small_cnn", "one-per-record"))
        raise ConfigError(f"model.architecture: {name} does not give the {outputs} outputs this task needs; use {wanted}")
    if in_channels not in (1, 3):
        raise ConfigError(f"model.architecture: {name} takes 1- or 3-channel images, not {in_channels}; use small_cnn or seg_cnn")
    if cfg.dropout:
        raise ConfigError(f"model.dropout: applies to mlp, small_cnn and seg_cnn only, not {name}; set it to 0")
    if name in segmenters:
        # weights_backbone=None: the builders' default would download ImageNet backbone weights.
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_outputs)
    return torchvision.models.get_model(name, weights=None, num_classes=num_outputs)


def pretrained_weights_path(architecture: str) -> Path:
    """Where torchvision keeps `architecture`'s default weights: $TORCH_HOME/hub/checkpoints/<file name of its URL>."""
    url = torchvision.models.get_model_weights(architecture).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_pretrained(network: nn.Module, cfg: ModelConfig, num_outputs: int) -> None:
    if cfg.weights_path is not None:
        field, path = "model.weights_path", Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"model.weights_path: {path} does not exist; point it at a .safetensors or .pth state dict")
    else:
        field, path = "model.pretrained", pretrained_weights_path(cfg.architecture)
        if not path.is_file():
            url = torchvision.models.get_model_weights(cfg.architecture).DEFAULT.url
            raise MissingWeightsError(
                f"model.pretrained: {cfg.architecture} weights are not at {path} and are never downloaded here; "
                f"fetch {url} on a machine with internet and copy it there (or set model.weights_path)")
    _load_state_dict_with_new_head(network, _read_state_dict(path, field), num_outputs, f"{field}: {path}")


def _read_state_dict(path: Path, field: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix, whatever the library raised
        raise UserFacingError(f"{field}: cannot read {path} as a state dict ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # training checkpoints that wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserFacingError(f"{field}: {path} is not a state dict (a mapping of names to tensors)")
    return state


def _load_state_dict_with_new_head(network: nn.Module, checkpoint: dict[str, torch.Tensor], num_outputs: int,
                                   source: str) -> None:
    """Load everything but the output layer(s) whose size is the checkpoint's class count; strict about the rest."""
    own = network.state_dict()
    # Auxiliary heads (FCN/DeepLab aux_classifier, Inception AuxLogits) the network was built without.
    checkpoint = {k: v for k, v in checkpoint.items() if k in own or "aux" not in k.split(".")[0].lower()}
    head = [k for k, v in checkpoint.items() if k in own and v.shape != own[k].shape
            and v.shape[1:] == own[k].shape[1:] and own[k].shape[0] == num_outputs]
    reshaped = [k for k, v in checkpoint.items() if k in own and v.shape != own[k].shape and k not in head]
    unexpected = [k for k in checkpoint if k not in own]
    # Old torchvision files predate BatchNorm's num_batches_tracked; load_state_dict fills it in.
    missing = [k for k in own if k not in checkpoint and not k.endswith("num_batches_tracked")]
    problems = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)) if keys]
    if problems:
        raise UserFacingError(f"{source} does not fit this architecture ({'; '.join(problems)}); "
                              "use the weights of the same torchvision model")
    network.load_state_dict({k: v for k, v in checkpoint.items() if k not in head}, strict=False)
