"""Feature statistics streamed from image folders: running sums, pytorch-fid's .npz, content-keyed caches.

Images are decoded in DataLoader workers, batch by batch, go through the
feature extractor and straight into float64 running sums, so no temporary
PNG folder and no (N, dims) float32 array sits between the images and the
statistics. Features are kept only when asked (KID needs them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes, save as save_safetensors_bytes
from PIL import Image
from pytorch_fid.fid_score import IMAGE_EXTENSIONS  # pytorch-fid's own list: a folder yields the same files

from trainflow.atomic_files import atomic_write_bytes
from trainflow.errors import UserFacingError
from trainflow.metrics.feature_extractors import FeatureExtractor


@dataclasses.dataclass(frozen=True)
class GaussianStatistics:
    """Mean (d,) and unbiased covariance (d, d) of a feature set, float64; `count` is unknown when loaded from .npz."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None


class FeatureStatistics:
    """Accumulates features batch by batch into float64 sums: Σx, Σxxᵀ and n.

    The sums are taken around the first batch's mean (a fixed shift), which keeps
    the one-pass covariance as accurate as numpy's two-pass `np.cov`.
    """

    def __init__(self, dim: int, keep_features: bool = False):
        self.dim = dim
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)
        self._kept: list[torch.Tensor] | None = [] if keep_features else None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch of features (n, dim)."""
        batch = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (n, {self.dim}), got {batch.shape}")
        if self._shift is None:
            self._shift = batch.mean(axis=0)
        centred = batch - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += batch.shape[0]
        if self._kept is not None:
            self._kept.append(torch.from_numpy(batch))

    def statistics(self) -> GaussianStatistics:
        """Mean and covariance equal to `x.mean(0)` and `np.cov(x, rowvar=False)` of all features seen.

        Raises UserFacingError with fewer than 2 samples (a covariance needs two).
        """
        if self.count < 2 or self._shift is None:
            raise UserFacingError(f"FID needs at least 2 images per side, got {self.count}")
        offset = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(offset, offset)) / (self.count - 1)
        return GaussianStatistics(self._shift + offset, (sigma + sigma.T) / 2, self.count)

    def features(self) -> torch.Tensor:
        """All features seen, float64 (n, dim); only with keep_features=True."""
        if self._kept is None:
            raise RuntimeError("features were not kept; create FeatureStatistics(..., keep_features=True)")
        return torch.cat(self._kept) if self._kept else torch.empty(0, self.dim, dtype=torch.float64)


def save_statistics(path: str | Path, stats: GaussianStatistics) -> None:
    """Write pytorch-fid's statistics format (.npz with `mu` and `sigma`), atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mu=stats.mu, sigma=stats.sigma)
    atomic_write_bytes(path, buffer.getvalue())


def load_statistics(path: str | Path) -> GaussianStatistics:
    """Read a .npz written by pytorch-fid or `save_statistics` (never unpickles).

    Raises UserFacingError naming the file when it is missing, not an .npz, lacks
    `mu`/`sigma`, holds objects, or the shapes do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"statistics file {path} does not exist; give an existing .npz or an image folder")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"mu", "sigma"} - set(archive.files)
            if missing:
                raise UserFacingError(f"statistics file {path} has no {' or '.join(sorted(missing))} array; write it with `trainflow fid --save-stats` or pytorch-fid --save-stats")
            mu, sigma = np.asarray(archive["mu"], np.float64), np.asarray(archive["sigma"], np.float64)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserFacingError(f"statistics file {path} is not a readable numeric .npz ({exc}); recreate it with --save-stats") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserFacingError(f"statistics file {path} holds mu {mu.shape} and sigma {sigma.shape}; sigma must be (d, d) for mu (d,)")
    return GaussianStatistics(mu, sigma)


def list_image_files(folder: str | Path) -> list[Path]:
    """The images pytorch-fid would read from `folder`: known extensions, directly inside, sorted.

    Raises UserFacingError when the folder does not exist, is not a folder, or holds no image.
    """
    root = Path(folder)
    if not root.exists():
        raise UserFacingError(f"{root} does not exist; give an image folder or a .npz statistics file")
    if not root.is_dir():
        raise UserFacingError(f"{root} is neither a folder of images nor a .npz statistics file")
    files = sorted(file for ext in IMAGE_EXTENSIONS for file in root.glob(f"*.{ext}") if file.is_file())
    if not files:
        kinds = ", ".join(f"*.{ext}" for ext in sorted(IMAGE_EXTENSIONS))
        raise UserFacingError(f"no images in {root} (looked for {kinds} directly in the folder, not in subfolders, like pytorch-fid)")
    return files


def _decode_rgb(path: Path) -> torch.Tensor:
    """pytorch-fid's loading: PIL → RGB → uint8 (3, H, W); to_float gives ToTensor's x / 255."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class _DecodedBatches(torch.utils.data.Dataset):
    """Item i = batch i of `files` decoded to uint8: one (n, 3, H, W) tensor, or a list when sizes differ.

    Whole batches per item keep per-image Python work out of the loop, and an error
    returned (not raised) in a worker reaches the user as one line, not a worker
    traceback. Workers only decode: the resize runs in the main process, because
    PyTorch's bilinear kernel rounds differently with another thread count, and
    pytorch-fid resizes in its main process.
    """

    def __init__(self, files: list[Path], batch_size: int):
        self.files, self.batch_size = files, batch_size

    def __len__(self) -> int:
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor | list[torch.Tensor] | None, str | None]:
        images = []
        for path in self.files[index * self.batch_size : (index + 1) * self.batch_size]:
            try:
                images.append(_decode_rgb(path))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                return None, f"image {path} cannot be decoded ({exc}); remove or replace it"
        if len({tuple(image.shape) for image in images}) == 1:
            return torch.stack(images), None
        return images, None


def _network_input(decoded: torch.Tensor | list[torch.Tensor], extractor: FeatureExtractor, folder: Path) -> torch.Tensor:
    """ToTensor's x / 255, then the extractor's `prepare` (per image when sizes differ, which pytorch-fid cannot batch)."""
    if isinstance(decoded, torch.Tensor):
        return extractor.prepare(decoded.float().div_(255))
    prepared = [extractor.prepare(image.unsqueeze(0).float().div_(255)) for image in decoded]
    if len({tuple(p.shape) for p in prepared}) > 1:
        raise UserFacingError(f"images in {folder} have different sizes; the {extractor.name} feature extractor needs one size")
    return torch.cat(prepared)


def _unchanged(item):
    return item


def stream_folder_statistics(
    files: list[Path], extractor: FeatureExtractor, batch_size: int = 50, num_workers: int = 1, keep_features: bool = False,
) -> FeatureStatistics:
    """Decode `files` in `num_workers` loader processes while the extractor runs; return the accumulated statistics.

    Batches hold `batch_size` images (fewer for the last), as in pytorch-fid, decoded and
    resized as pytorch-fid does; the features equal pytorch-fid's up to float32 summation
    order (the CPU network runs channels-last). Raises UserFacingError naming the first
    image that cannot be decoded.
    """
    stats = FeatureStatistics(extractor.dim, keep_features=keep_features)
    loader = torch.utils.data.DataLoader(
        _DecodedBatches(files, max(1, min(batch_size, len(files)))),
        batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_unchanged,
    )
    with torch.inference_mode():
        for decoded, error in loader:
            if error is not None:
                raise UserFacingError(error)
            network_input = _network_input(decoded, extractor, files[0].parent)
            stats.update(extractor.forward(network_input.to(extractor.device)))
    return stats


def dataset_content_hash(files: list[Path]) -> str:
    """sha256 over each file's name and bytes, in order: changes when any image, name or the set changes."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _writable_cache(entry: Path):
    """A cache folder that cannot be written is the user's to fix: one sentence naming it, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UserFacingError(f"cannot write the feature cache entry {entry} ({exc.strerror or exc}); "
                              "give a writable cache folder (--cache or score.reference_cache)") from None


def cached_folder_statistics(
    files: list[Path], extractor: FeatureExtractor, cache_dir: str | Path, batch_size: int = 50, num_workers: int = 1,
) -> GaussianStatistics:
    """Statistics of `files`, from `cache_dir/<extractor identity>-<content hash>.npz` when present, else computed and stored.

    An unreadable cache entry is recomputed and replaced (the cache is ours, not the user's input).
    """
    entry = Path(cache_dir) / f"{extractor.identity or extractor.name}-{dataset_content_hash(files)[:32]}.npz"
    if entry.is_file():
        try:
            cached = load_statistics(entry)
            if cached.mu.shape == (extractor.dim,):
                return cached
        except UserFacingError:
            pass
    stats = stream_folder_statistics(files, extractor, batch_size, num_workers).statistics()
    with _writable_cache(entry):
        save_statistics(entry, stats)
    return stats


def cached_features(
    content_hash: str, extractor: FeatureExtractor, cache_dir: str | Path, compute: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Features (N, dim) of an image set, from `cache_dir/<extractor identity>-<content hash>.safetensors` when
    present and well-formed, else `compute()`d and stored atomically.

    `content_hash` must change whenever an image or the set changes (dataset_content_hash). An unreadable or
    mis-shaped entry is recomputed and replaced (the cache is ours, not the user's input).
    """
    entry = Path(cache_dir) / f"{extractor.identity or extractor.name}-{content_hash[:32]}.safetensors"
    if entry.is_file():
        try:
            cached = load_safetensors_bytes(entry.read_bytes())["features"]
            if cached.ndim == 2 and cached.shape[1] == extractor.dim and cached.shape[0] >= 2:
                return cached
        except (SafetensorError, KeyError, OSError):
            pass
    features = compute()
    with _writable_cache(entry):
        atomic_write_bytes(entry, save_safetensors_bytes({"features": features.contiguous()}))
    return features
