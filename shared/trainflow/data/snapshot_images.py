"""Ingest snapshot images: how ingest sizes a record's image (and its mask), and the one reader every later stage
uses (the cache build, lazy loading, scoring).

Sizing: one square, or the nearest aspect-ratio bucket. Both resize the image to cover the target and centre-crop the excess; with buckets the target is the bucket
nearest the image's aspect ratio, so the crop is small. What was done is kept beside the image (original size
and the crop's top-left corner in the resized image), since SDXL is conditioned on both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from trainflow.config import IngestConfig
from trainflow.diffusion.buckets import nearest_bucket, outside_range
from trainflow.errors import UserFacingError


@dataclasses.dataclass(frozen=True)
class Fitted:
    image: Image.Image
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) in the resized image

    @property
    def changed(self) -> bool:
        """Whether the snapshot differs in size or framing from the original (then both are recorded)."""
        return self.original_size != (self.image.height, self.image.width) or self.crop_top_left != (0, 0)


def resize_to_cover(image: Image.Image, width: int, height: int, resample=Image.Resampling.BICUBIC
                    ) -> tuple[Image.Image, tuple[int, int]]:
    """Resize so the image covers width x height, then crop the centre; returns it and the crop's (top, left)."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), resample)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height)), (top, left)


def target_size(image: Image.Image, cfg: IngestConfig) -> tuple[int, int]:
    """(width, height) of the snapshot: the nearest bucket with ingest.buckets, else resolution x resolution."""
    if cfg.buckets is None:
        return cfg.resolution, cfg.resolution
    return nearest_bucket(image.width, image.height, cfg.bucket_sizes)


def fit_image(image: Image.Image, cfg: IngestConfig) -> Fitted:
    width, height = target_size(image, cfg)
    fitted, crop = resize_to_cover(image, width, height)
    return Fitted(fitted, (image.height, image.width), crop)


def fit_mask(mask: np.ndarray, size: tuple[int, int], weights: bool) -> Image.Image:
    """A mask sized like its image's snapshot ((width, height)). Class ids (segmentation) resize with nearest
    neighbour so ids never blend; loss weights (text_to_image) bilinearly."""
    resample = Image.Resampling.BILINEAR if weights else Image.Resampling.NEAREST
    return resize_to_cover(Image.fromarray(mask, mode="L"), *size, resample)[0]


def beyond_aspect_range(image: Image.Image, cfg: IngestConfig) -> bool:
    """With buckets: whether the image is wider or narrower than any bucket (it is cropped to the nearest one)."""
    b = cfg.buckets
    return b is not None and outside_range(image.width, image.height, b.min_aspect_ratio, b.max_aspect_ratio)


@dataclasses.dataclass
class SnapshotSizes:
    """How many snapshot images of each size (bucket) each split got, for the ingest report."""

    per_bucket: dict[tuple[int, int], dict[str, int]] = dataclasses.field(default_factory=dict)
    beyond_range: int = 0

    def add(self, split: str, size: tuple[int, int], beyond_range: bool) -> None:
        counts = self.per_bucket.setdefault(tuple(size), {})
        counts[split] = counts.get(split, 0) + 1
        self.beyond_range += beyond_range

    def markdown(self, cfg: IngestConfig) -> list[str]:
        b = cfg.buckets
        lines = ["## Aspect-ratio buckets", "",
                 f"{len(cfg.bucket_sizes)} buckets of about {b.resolution or cfg.resolution}² pixels (sides multiples "
                 f"of {b.step}, width/height {b.min_aspect_ratio:g} to {b.max_aspect_ratio:g}); "
                 f"{len(self.per_bucket)} hold images.", "",
                 "| bucket (width × height) | width/height | train | val | test |", "|---|---|---|---|---|"]
        for (width, height), counts in sorted(self.per_bucket.items(), key=lambda item: item[0][0] / item[0][1]):
            lines.append(f"| {width} × {height} | {width / height:.2f} | {counts.get('train', 0)} | "
                         f"{counts.get('val', 0)} | {counts.get('test', 0)} |")
        if self.beyond_range:
            lines += ["", f"{self.beyond_range} images were wider or narrower than every bucket and were cropped to "
                          "the nearest one (widen ingest.buckets.min_aspect_ratio / max_aspect_ratio to keep more)."]
        return lines + [""]


def _snapshot_path(root: Path, relative: str) -> Path:
    """root/relative, refusing a manifest path that would leave the dataset folder (absolute, or with '..')."""
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts or not parts.parts:
        raise UserFacingError(f"the ingest manifest in {root} names the image {relative!r}, which is not a path inside "
                              "the dataset folder; re-run ingest_split to rebuild the snapshot")
    return Path(root) / parts


def read_image(root: Path, relative: str) -> np.ndarray:
    """A snapshot image as (H, W, 3) uint8 RGB."""
    with Image.open(_snapshot_path(root, relative)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(root: Path, relative: str) -> np.ndarray:
    """A snapshot mask as (H, W) uint8: class ids (segmentation) or loss weights 0..255 (text_to_image).
    Ingest writes both as 8-bit greyscale, so converting to "L" leaves the values as written."""
    with Image.open(_snapshot_path(root, relative)) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def read_size(root: Path, relative: str) -> tuple[int, int]:
    """(height, width) of a snapshot image, from its header alone."""
    with Image.open(_snapshot_path(root, relative)) as image:
        return image.height, image.width
