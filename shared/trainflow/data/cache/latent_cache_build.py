"""Building latents.h5 (layout: trainflow.data.cache.latent_cache): keyed, reusable and resumable.

    key = cache_key(dataset, "latents", {base model, sha256 of the VAE, text encoder(s) and tokenizer(s) files,
                                         storage dtype})

The folder it is built in comes from trainflow.data.cache.build_folder: under `cache.cache_root`
a later run with the same key reuses the finished file (no encoder is even loaded), and without
one a retry into the same output path still resumes. Records are encoded in shards of at most
RECORDS_PER_SHARD (or cache.shard_records when smaller), each written atomically and recorded in
the build's progress file, so a pod killed after hours of VAE encoding loses at most one shard.
When every shard is there they are assembled into latents.h5 (trainflow.data.cache.latent_cache_assembly).
With cache.flip_latents every train image is also encoded mirrored (the VAE is not exactly
flip-equivariant, so flipping the latent tensor would not be the same thing); CachedLatents
then picks one of the two per record and epoch. Images of several sizes (ingest.buckets) are
encoded size by size, so every VAE batch holds one size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from trainflow.atomic_files import atomic_directory, atomic_file_path
from trainflow.config import CacheConfig, ModelConfig
from trainflow.data.cache.build_folder import CacheBuildFolder, cache_key
from trainflow.data.manifest import SPLITS, ManifestEntry, manifest_sha256, read_manifest
from trainflow.data.snapshot_images import read_image, read_mask, read_size
from trainflow.data.cache.latent_cache import CACHE_FILE
from trainflow.data.cache.latent_cache_assembly import assemble_latent_cache
from trainflow.diffusion.model_families import detect_family, time_ids
from trainflow.diffusion.model_loading import PipelineParts, encode_captions, load_pipeline_parts, resolve_pipeline_folder
from trainflow.errors import UserFacingError

RECORDS_PER_SHARD = 2048  # at SD scale on one GPU, a few minutes of encoding: what a kill can cost
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")  # absent parts hash to nothing


def load_images(dataset_dir: Path, relative_paths: list[str]) -> torch.Tensor:
    """PNG snapshots -> float tensor in [-1, 1], shape (N, 3, H, W)."""
    arrays = [read_image(dataset_dir, relative) for relative in relative_paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def load_loss_masks(dataset_dir: Path, relative_paths: list[str | None], image_size: tuple[int, int],
                    latent_size: tuple[int, int]) -> torch.Tensor:
    """Loss-weight masks (0..255 PNGs -> 0..1), area-averaged down to the latent grid: (N, 1, h, w).

    A record without a mask weighs every latent 1, as training without masks does.
    """
    masks = []
    for relative in relative_paths:
        if relative is None:
            masks.append(torch.ones(1, *image_size))
            continue
        masks.append(torch.from_numpy(read_mask(dataset_dir, relative).astype(np.float32) / 255.0)[None])
    return F.interpolate(torch.stack(masks), size=latent_size, mode="area")


def encoders_sha256(base_folder: Path) -> str:
    """sha256 over the names and bytes of the VAE, text encoder and tokenizer files: what the cache's values depend on."""
    digest = hashlib.sha256()
    for part in ENCODER_PARTS:
        for path in sorted(p for p in (base_folder / part).rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(base_folder)).encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()


def build_latent_cache(dataset_dir: str | Path, output_dir: str | Path, model_cfg: ModelConfig, cfg: CacheConfig,
                       device: torch.device) -> dict[str, Any]:
    """Build (or reuse, or finish) latents.h5 for the three splits into `output_dir`; returns the artifact metadata."""
    root, output = Path(dataset_dir), Path(output_dir)
    base_folder = resolve_pipeline_folder(model_cfg.base, model_cfg.revision)
    family = detect_family(base_folder, model_cfg.family)
    key = cache_key(root, "latents", {"base_model": model_cfg.base, "encoders_sha256": encoders_sha256(base_folder),
                                      "storage_dtype": cfg.storage_dtype, "flip_latents": cfg.flip_latents})
    splits = {split: read_manifest(root, split) for split in SPLITS}
    if not splits["train"]:
        raise UserFacingError("the train split is empty; ingest more records or change ingest.split")
    with CacheBuildFolder(output, key, "latents", cfg.cache_root) as build:
        final = build.folder / CACHE_FILE
        reused = final.is_file() and _key_of(final) == key
        if not reused:
            encoder = _Encoder(load_pipeline_parts(base_folder, family=family), cfg, device)
            shards = _encode_shards(build, root, splits, encoder, cfg)
            uncond_text, uncond_pooled = encoder.captions([""])
            assemble_latent_cache(final, build.folder, shards, splits, {
                "scaling_factor": float(encoder.parts.vae.config.scaling_factor), "base_model": model_cfg.base,
                "latent_channels": int(encoder.parts.vae.config.latent_channels), "dataset_sha256": manifest_sha256(root),
                "cache_key": key, "family": family.name,
            }, encoder.parts.tokenizers, uncond_text, uncond_pooled)
        if build.shared:
            with atomic_directory(output) as staging:
                _link_or_copy(final, staging / CACHE_FILE)
        else:
            build.move_to_output()
    with h5py.File(output / CACHE_FILE, "r") as handle:
        attrs = dict(handle.attrs)
    return {**{f"num_{split}": len(entries) for split, entries in splits.items()},
            "dataset_sha256": attrs["dataset_sha256"], "base_model": model_cfg.base, "family": family.name,
            "scaling_factor": float(attrs["scaling_factor"]), "device": str(device), "cache_key": key,
            "cache_location": str(build.folder.resolve() if build.shared else output.resolve()), "reused": reused}


def _key_of(path: Path) -> str | None:
    try:
        with h5py.File(path, "r") as handle:
            return handle.attrs.get("cache_key")
    except OSError:  # a damaged file from an older build: rebuilt
        return None


@dataclasses.dataclass
class _Encoder:
    """The base's VAE and text encoder(s) on the build's device, writing the cache's storage dtype."""

    parts: PipelineParts
    cfg: CacheConfig
    device: torch.device

    def __post_init__(self) -> None:
        self.parts.vae.to(self.device)
        for encoder in self.parts.text_encoders:
            encoder.to(self.device)
        self.storage = np.float16 if self.cfg.storage_dtype == "float16" else np.float32

    def captions(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        states, pooled = encode_captions(self.parts, captions, self.device)
        return states.cpu().numpy().astype(self.storage), None if pooled is None else pooled.cpu().numpy().astype(self.storage)

    @torch.no_grad()
    def images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.parts.vae.encode(pixels.to(self.device)).latent_dist.parameters.cpu().numpy().astype(self.storage)


def _encode_shards(build: CacheBuildFolder, root: Path, splits, encoder: _Encoder, cfg: CacheConfig) -> dict[str, list[str]]:
    """Encode every shard a previous attempt did not finish; returns each split's shard file names in order."""
    completed = build.completed_shards()
    size = max(1, min(cfg.shard_records, RECORDS_PER_SHARD))
    with_masks = any(e.mask for entries in splits.values() for e in entries)
    names = {split: [f"{split}-{i // size:05d}.h5" for i in range(0, len(entries), size)] for split, entries in splits.items()}
    todo = sum(len(splits[split][i * size:(i + 1) * size]) for split in SPLITS
               for i, name in enumerate(names[split]) if name not in completed)
    with tqdm(total=todo, desc="cache: encoding", unit="record", mininterval=2.0, disable=None) as progress:
        for split, entries in splits.items():
            for index, name in enumerate(names[split]):
                if name in completed:
                    continue
                chunk = entries[index * size:(index + 1) * size]
                flip = cfg.flip_latents and split == "train"
                _write_shard(build.folder / name, _encode_chunk(root, chunk, encoder, flip, with_masks, progress))
                build.mark_complete(completed, name, {"records": len(chunk)})
    return names


def _encode_chunk(root: Path, chunk: list[ManifestEntry], encoder: _Encoder, flip: bool, with_masks: bool,
                  progress: tqdm) -> dict[str, Any]:
    """One shard's arrays: per-record text arrays in manifest order, latents grouped by image size.

    Layout: {"text_embeddings": (n, T, D), ["pooled_text_embeddings", "time_ids"],
             "sizes": {"<h>x<w>": {"positions", "latent_moments", ["latent_moments_flipped", "loss_masks"]}}}
    """
    batch_size = encoder.cfg.batch_size
    states, pooled = zip(*(encoder.captions([e.caption for e in chunk[i:i + batch_size]])
                           for i in range(0, len(chunk), batch_size)))
    arrays: dict[str, Any] = {"text_embeddings": np.concatenate(states)}
    if pooled[0] is not None:
        arrays["pooled_text_embeddings"] = np.concatenate(pooled)
    sizes = [read_size(root, e.image) for e in chunk]
    if encoder.parts.family.takes_time_ids:
        # A mirrored image keeps its time ids: its centred crop is symmetric to within a pixel.
        arrays["time_ids"] = np.array([time_ids(e.original_size or hw, e.crop_top_left or (0, 0), hw)
                                       for e, hw in zip(chunk, sizes)], dtype=np.float32)
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, hw in enumerate(sizes):
        by_size.setdefault(hw, []).append(position)
    arrays["sizes"] = {}
    for hw, positions in sorted(by_size.items()):
        group: dict[str, list] = {"latent_moments": [], "latent_moments_flipped": [], "loss_masks": []}
        for start in range(0, len(positions), batch_size):
            batch = [chunk[p] for p in positions[start:start + batch_size]]
            pixels = load_images(root, [e.image for e in batch])
            group["latent_moments"].append(encoder.images(pixels))
            if flip:  # the mirrored image, encoded (the VAE is not flip-equivariant)
                group["latent_moments_flipped"].append(encoder.images(torch.flip(pixels, dims=[3])))
            if with_masks:
                latent_hw = group["latent_moments"][-1].shape[-2:]
                group["loss_masks"].append(load_loss_masks(root, [e.mask for e in batch], hw, latent_hw)
                                           .numpy().astype(encoder.storage))
            progress.update(len(batch))
        arrays["sizes"][f"{hw[0]}x{hw[1]}"] = {"positions": np.array(positions, dtype=np.int64),
                                               **{k: np.concatenate(v) for k, v in group.items() if v}}
    return arrays


def _write_shard(path: Path, arrays: dict[str, Any]) -> None:
    with atomic_file_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for name, value in arrays.items():
            if name != "sizes":
                handle[name] = value
        for size, group in arrays["sizes"].items():
            for name, value in group.items():
                handle[f"sizes/{size}/{name}"] = value


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when the output is on the cache root's filesystem (no second copy of the cache), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
