"""Image-to-image quality: PSNR and SSIM (torchmetrics) and LPIPS (the lpips package).

All take float images (N, 3, H, W) in [0, 1]. PSNR and SSIM are given the data
range explicitly (1.0): torchmetrics otherwise infers it from the batch, which
changes the number with the image content.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from trainflow.errors import UserFacingError
from trainflow.metrics.weights import lpips_backbone_weights

DATA_RANGE = 1.0
LPIPS_MIN_SIZE = 64  # AlexNet's strided stem leaves nothing of smaller images


def quantise_like_png(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 256 levels a saved PNG keeps, so scores match what a person downloads."""
    return (images.clamp(0, 1) * 255).round() / 255


def _check_pairs(images: torch.Tensor, references: torch.Tensor, what: str) -> None:
    if images.shape != references.shape:
        raise UserFacingError(f"{what} needs images and references of the same shape, got {tuple(images.shape)} and {tuple(references.shape)}")


@torch.no_grad()
def psnr(images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean per-image PSNR in dB (data range 1.0); inf when every pair is identical."""
    _check_pairs(images, references, "PSNR")
    per_image = peak_signal_noise_ratio(images.float(), references.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return float(per_image.mean().item())


@torch.no_grad()
def ssim(images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, data range 1.0), in [-1, 1]."""
    _check_pairs(images, references, "SSIM")
    return float(structural_similarity_index_measure(images.float(), references.float(), data_range=DATA_RANGE).item())


def _read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file ends the same way for the user
        raise UserFacingError(f"{what} weights file {path} cannot be read as a PyTorch state dict ({type(exc).__name__}); replace it") from None


def load_lpips(device: torch.device, net: str = "alex"):
    """The lpips package's LPIPS v0.1 network with its published linear layers and torchvision's ImageNet backbone.

    lpips.LPIPS(pretrained=True) loads both through torch.load without
    weights_only (its own .pth and torch.hub's cache), i.e. by unpickling; here the
    network is built empty and both files are read with weights_only=True into the
    same modules, so the numbers are the package's. Raises MissingWeightsError
    naming the backbone file in TORCH_HOME, UserFacingError when a file is unreadable.
    """
    import lpips

    backbone_file = lpips_backbone_weights(net)
    with warnings.catch_warnings():  # the package passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    backbone = _read_weights(backbone_file, f"LPIPS {net} backbone")
    # The package cuts torchvision's `features` Sequential into slices whose
    # children keep their original index as name: features.<i>.* -> slice<k>.<i>.*
    mapped = {}
    for slice_name, block in model.net.named_children():
        for index, _ in block.named_children():
            for param in ("weight", "bias"):
                key = f"features.{index}.{param}"
                if key in backbone:
                    mapped[f"{slice_name}.{index}.{param}"] = backbone[key]
    missing = [k for k in model.net.state_dict() if k not in mapped]
    if missing:
        raise UserFacingError(f"{backbone_file} is not torchvision's {net} ImageNet state dict (no {missing[0]}); replace it")
    model.net.load_state_dict(mapped)
    linear_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    model.load_state_dict(_read_weights(linear_file, "LPIPS linear-layer"), strict=False)
    return model.to(device).eval()


def _lpips_input(images: torch.Tensor) -> torch.Tensor:
    scaled = images.float() * 2 - 1
    if scaled.shape[-1] < LPIPS_MIN_SIZE:
        scaled = torch.nn.functional.interpolate(scaled, size=(LPIPS_MIN_SIZE, LPIPS_MIN_SIZE), mode="bilinear", align_corners=False)
    return scaled


@torch.no_grad()
def lpips_distances(model, first: torch.Tensor, second: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-pair LPIPS distance (N,) between two aligned image batches in [0, 1]; images under 64 px are upsampled."""
    device = next(model.parameters()).device
    a, b = _lpips_input(first), _lpips_input(second)
    chunks = [model(a[i : i + batch_size].to(device), b[i : i + batch_size].to(device)).flatten().cpu()
              for i in range(0, len(a), batch_size)]
    return torch.cat(chunks)


def lpips_to_reference(model, images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean LPIPS between each generated image and the real image of its caption (lower = closer)."""
    _check_pairs(images, references, "LPIPS")
    return float(lpips_distances(model, images, references).mean().item())


def lpips_diversity(model, images: torch.Tensor, seed: int = 0) -> float:
    """Mean LPIPS over disjoint random pairs of generated images (higher = more diverse; a collapsed model is near 0)."""
    if images.shape[0] < 2:
        raise UserFacingError("LPIPS diversity needs at least 2 generated images")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    pairs = order[: (len(order) // 2) * 2].view(-1, 2)
    return float(lpips_distances(model, images[pairs[:, 0]], images[pairs[:, 1]]).mean().item())
