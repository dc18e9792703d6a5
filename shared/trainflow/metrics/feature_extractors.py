"""Image feature extractors for FID and KID: pytorch-fid's InceptionV3, or a trainflow classifier."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle  # only for the exception type torch.load(weights_only=True) raises on a damaged file; nothing is unpickled
import zipfile
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

import torch
import torch.nn.functional as F

from trainflow.atomic_files import atomic_file_path
from trainflow.config import FeatureExtractorConfig
from trainflow.errors import UserFacingError
from trainflow.metrics.weights import fid_inception_weights
from trainflow.models.image_classifier import WEIGHTS_FILE as CLASSIFIER_WEIGHTS_FILE, load_classifier

INCEPTION_DIMS = (64, 192, 768, 2048)  # pytorch-fid's --dims choices: its four output blocks
INCEPTION_INPUT_SIZE = 299


@dataclasses.dataclass
class FeatureExtractor:
    """`prepare` runs on the CPU, `forward` on `device`; both take batches.

    prepare maps float images in [0, 1], (N, 3, H, W), to the network's input;
    forward maps that to features (N, dim).
    """

    name: str
    dim: int
    prepare: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    identity: str = ""  # name plus a digest of the weights: what a statistics cache is keyed by

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Features of in-memory images (N, 3, H, W) in [0, 1], as float64 on the CPU."""
        chunks = [self.forward(self.prepare(chunk).to(self.device)).double().cpu() for chunk in images.split(batch_size)]
        return torch.cat(chunks)


def resize_for_inception(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's InceptionV3 input resize (bilinear to 299x299, align_corners=False).

    It is the same call pytorch-fid makes inside the network, made before the
    network so that images of different sizes can be resized one by one and
    then share a batch.
    """
    return F.interpolate(images, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear", align_corners=False)


def _read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserFacingError(
            f"FID InceptionV3 weights file {weights} cannot be read as a PyTorch state dict ({first_line}); "
            "replace it with pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
        ) from None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_inception_extractor(weights_path: str | None, device: torch.device, dims: int = 2048) -> FeatureExtractor:
    """pytorch-fid's FID InceptionV3 returning its `dims`-wide block (64, 192, 768 or 2048), as pytorch-fid computes it.

    Weights: `weights_path`, else $TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth.
    Raises MissingWeightsError naming the file when absent, UserFacingError when it
    is not a readable FID InceptionV3 state dict or `dims` is not one of INCEPTION_DIMS.
    """
    from pytorch_fid.inception import InceptionV3

    if dims not in INCEPTION_DIMS:
        raise UserFacingError(f"--dims {dims} is not an InceptionV3 feature width; use one of {', '.join(map(str, INCEPTION_DIMS))}")
    weights = fid_inception_weights(weights_path)
    state_dict = _read_state_dict(weights)

    # pytorch-fid fetches its weights through torch.hub (which may download and
    # unpickles without weights_only); hand it our file, loaded safely, instead.
    try:
        with mock.patch("pytorch_fid.inception.load_state_dict_from_url", lambda *_a, **_k: state_dict):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=False, normalize_input=True,
                                use_fid_inception=True).eval().to(device)
    except RuntimeError as exc:  # load_state_dict: missing/unexpected keys or wrong shapes
        raise UserFacingError(
            f"{weights} is not pytorch-fid's FID InceptionV3 state dict ({str(exc).splitlines()[0]}); "
            "replace it with pt_inception-2015-12-05-6726825d.pth"
        ) from None

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if batch.device.type == "cpu":
            # oneDNN runs this network about 1.7x faster channels-last on a CPU (its pools above all; measured
            # 32 vs 55 ms an image, batch 50, 2 cores). Sums change order: features move by ~3e-5 relative.
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = model(batch)[0]
        if features.shape[2:] != (1, 1):  # blocks 0-2 are feature maps: pytorch-fid averages them
            features = F.adaptive_avg_pool2d(features, output_size=(1, 1))
        return features.flatten(1)

    name = "inception-v3" if dims == 2048 else f"inception-v3-{dims}"
    return FeatureExtractor(name, dims, resize_for_inception, forward, device, identity=f"{name}-{_file_digest(weights)}")


def _load_classifier(path: str, device: torch.device) -> FeatureExtractor:
    classifier = load_classifier(path).to(device).eval()
    name = f"{classifier.config.get('name', 'classifier')}"
    identity = f"{name}-{_file_digest(Path(path) / CLASSIFIER_WEIGHTS_FILE)}"  # the weights: a retrained one is a new key
    return FeatureExtractor(name, classifier.net.feature_dim, lambda x: x, lambda x: classifier.features(x).flatten(1), device, identity)


def load_feature_extractor(cfg: FeatureExtractorConfig, device: torch.device) -> FeatureExtractor:
    """Raises MissingWeightsError (naming the file) when the extractor's weights are absent."""
    if cfg.kind == "inception":
        return load_inception_extractor(cfg.path, device)
    assert cfg.path is not None  # enforced by the config schema
    return _load_classifier(cfg.path, device)


def write_stand_in_inception_weights(path: str | Path, calibration_images: torch.Tensor, seed: int = 0) -> Path:
    """Write a state dict with pytorch-fid's FID InceptionV3 layout and seeded random weights.

    For exactness tests and benchmarks where the real weights cannot be
    downloaded: both pytorch-fid and trainflow then read the same file. Convolutions
    keep PyTorch's seeded default init; each BatchNorm's running statistics are set
    from `calibration_images` (float (N, 3, H, W) in [0, 1], N ≥ 2), so activations
    stay O(1) through the 94 layers instead of vanishing and the features vary with
    the image. Calibrate on images like the ones you will compare (and some variety,
    e.g. inverted copies): images far from them drive activations to huge values.
    Not a substitute for the real weights: its features mean nothing beyond this.
    Returns `path`.
    """
    from pytorch_fid import inception

    torch.manual_seed(seed)
    with mock.patch("pytorch_fid.inception.load_state_dict_from_url", lambda *_a, **_k: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *_a, **_k: None):
        network = inception.fid_inception_v3()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass sets the statistics of this batch
    network.train()
    with torch.no_grad():
        x = 2 * resize_for_inception(calibration_images) - 1
        for layer in _FEATURE_LAYERS:
            x = getattr(network, layer)(x)
    state_dict = network.eval().state_dict()
    target = Path(path)
    with atomic_file_path(target) as staging:
        torch.save(state_dict, staging)
    return target


_FEATURE_LAYERS: Sequence[str] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)
