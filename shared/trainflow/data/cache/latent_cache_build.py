"""Building latents.h5 (layout: trainflow.data.cache.latent_cache): keyed, reusable and resumable.

    key = cache_key(dataset, "latents", {base model, sha256 of the VAE, text encoder and tokenizer files,
                                         storage dtype})

The folder it is built in comes from trainflow.data.cache.build_folder: under `cache.cache_root`
a later run with the same key reuses the finished file (no encoder is even loaded), and without
one a retry into the same output path still resumes. Records are encoded in shards of at most
RECORDS_PER_SHARD (or cache.shard_records when smaller), each written atomically and recorded in
the build's progress file, so a pod killed after hours of VAE encoding loses at most one shard.
When every shard is there they are assembled into latents.h5 (written atomically) and removed.
With cache.flip_latents every train image is also encoded mirrored (the VAE is not exactly
flip-equivariant, so flipping the latent tensor would not be the same thing); CachedLatents
then picks one of the two per record and epoch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from trainflow.atomic_files import atomic_directory
from trainflow.config import CacheConfig, ModelConfig
from trainflow.data.cache.build_folder import CacheBuildFolder, cache_key
from trainflow.data.manifest import SPLITS, manifest_sha256, read_manifest
from trainflow.data.cache.latent_cache import CACHE_FILE
from trainflow.diffusion.model_loading import encode_captions, load_pipeline_parts, resolve_pipeline_folder, tokenize_captions
from trainflow.errors import UserFacingError

RECORDS_PER_SHARD = 2048  # at SD scale on one GPU, a few minutes of encoding: what a kill can cost
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer")


def load_images(dataset_dir: Path, relative_paths: list[str]) -> torch.Tensor:
    """PNG snapshots -> float tensor in [-1, 1], shape (N, 3, H, W)."""
    arrays = []
    for relative in relative_paths:
        with Image.open(dataset_dir / relative) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


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
    key = cache_key(root, "latents", {"base_model": model_cfg.base, "encoders_sha256": encoders_sha256(base_folder),
                                      "storage_dtype": cfg.storage_dtype, "flip_latents": cfg.flip_latents})
    splits = {split: read_manifest(root, split) for split in SPLITS}
    if not splits["train"]:
        raise UserFacingError("the train split is empty; ingest more records or change ingest.split")
    with CacheBuildFolder(output, key, "latents", cfg.cache_root) as build:
        final = build.folder / CACHE_FILE
        reused = final.is_file() and _key_of(final) == key
        if not reused:
            parts = load_pipeline_parts(base_folder)
            vae, text_encoder = parts.vae.to(device), parts.text_encoder.to(device)
            storage = np.float16 if cfg.storage_dtype == "float16" else np.float32
            shards = _encode_shards(build, root, splits, parts.tokenizer, vae, text_encoder, cfg, storage, device)
            _assemble(final, build.folder, shards, splits, {
                "scaling_factor": float(vae.config.scaling_factor), "base_model": model_cfg.base,
                "latent_channels": int(vae.config.latent_channels), "dataset_sha256": manifest_sha256(root),
                "cache_key": key,
            }, parts.tokenizer, encode_captions(parts.tokenizer, text_encoder, [""], device).cpu().numpy().astype(storage))
        if build.shared:
            with atomic_directory(output) as staging:
                _link_or_copy(final, staging / CACHE_FILE)
        else:
            build.move_to_output()
    with h5py.File(output / CACHE_FILE, "r") as handle:
        attrs = dict(handle.attrs)
    return {**{f"num_{split}": len(entries) for split, entries in splits.items()},
            "dataset_sha256": attrs["dataset_sha256"], "base_model": model_cfg.base,
            "scaling_factor": float(attrs["scaling_factor"]), "device": str(device), "cache_key": key,
            "cache_location": str(build.folder.resolve() if build.shared else output.resolve()), "reused": reused}


def _key_of(path: Path) -> str | None:
    try:
        with h5py.File(path, "r") as handle:
            return handle.attrs.get("cache_key")
    except OSError:  # a damaged file from an older build: rebuilt
        return None


def _encode_shards(build: CacheBuildFolder, root: Path, splits, tokenizer, vae, text_encoder, cfg: CacheConfig,
                   storage, device) -> dict[str, list[str]]:
    """Encode every shard a previous attempt did not finish; returns each split's shard file names in order."""
    completed = build.completed_shards()
    size = max(1, min(cfg.shard_records, RECORDS_PER_SHARD))
    names = {split: [f"{split}-{i // size:05d}.h5" for i in range(0, len(entries), size)] for split, entries in splits.items()}
    todo = sum(len(splits[split][i * size:(i + 1) * size]) for split in SPLITS
               for i, name in enumerate(names[split]) if name not in completed)
    with tqdm(total=todo, desc="cache: encoding", unit="record", mininterval=2.0, disable=None) as progress:
        for split, entries in splits.items():
            for index, name in enumerate(names[split]):
                if name in completed:
                    continue
                chunk = entries[index * size:(index + 1) * size]
                moments, text, flipped = [], [], []
                for start in range(0, len(chunk), cfg.batch_size):
                    batch = chunk[start:start + cfg.batch_size]
                    with torch.no_grad():
                        pixels = load_images(root, [e.image for e in batch]).to(device)
                        moments.append(vae.encode(pixels).latent_dist.parameters.cpu().numpy().astype(storage))
                        if cfg.flip_latents and split == "train":  # the mirrored image, encoded (the VAE is not flip-equivariant)
                            mirrored = torch.flip(pixels, dims=[3])
                            flipped.append(vae.encode(mirrored).latent_dist.parameters.cpu().numpy().astype(storage))
                        text.append(encode_captions(tokenizer, text_encoder, [e.caption for e in batch], device)
                                    .cpu().numpy().astype(storage))
                    progress.update(len(batch))
                _write_shard(build.folder / name, np.concatenate(moments), np.concatenate(text),
                             np.concatenate(flipped) if flipped else None)
                build.mark_complete(completed, name, {"records": len(chunk)})
    return names


def _write_shard(path: Path, moments: np.ndarray, text: np.ndarray, flipped: np.ndarray | None = None) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with h5py.File(temporary, "w") as handle:
        handle["latent_moments"], handle["text_embeddings"] = moments, text
        if flipped is not None:
            handle["latent_moments_flipped"] = flipped
    os.replace(temporary, path)


def _assemble(final: Path, folder: Path, shards: dict[str, list[str]], splits, attrs: dict[str, Any], tokenizer,
              uncond_embedding: np.ndarray) -> None:
    """Write latents.h5 from the shards (atomically), then remove the shards."""
    with h5py.File(folder / shards["train"][0], "r") as first:
        moment_shape, text_shape = first["latent_moments"].shape[1:], first["text_embeddings"].shape[1:]
        dtype = first["latent_moments"].dtype
        train_flipped = "latent_moments_flipped" in first
    temporary = final.with_name(f".{final.name}.tmp")
    strings = h5py.string_dtype()
    with h5py.File(temporary, "w") as handle:
        handle.attrs.update(attrs)
        handle["uncond_embedding"] = uncond_embedding
        handle["uncond_input_ids"] = tokenize_captions(tokenizer, [""]).numpy().astype(np.int64)
        for split, entries in splits.items():
            flipped = train_flipped and split == "train"
            group = handle.create_group(split)
            group.create_dataset("record_ids", data=[e.record_id for e in entries], dtype=strings)
            group.create_dataset("captions", data=[e.caption for e in entries], dtype=strings)
            group.create_dataset("labels", data=np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64))
            group.create_dataset("input_ids", data=tokenize_captions(tokenizer, [e.caption for e in entries]).numpy().astype(np.int64)
                                 if entries else np.zeros((0, tokenizer.model_max_length), dtype=np.int64))
            # zero-length arrays for an empty split, so readers see the same layout everywhere
            moments = group.create_dataset("latent_moments", shape=(len(entries), *moment_shape), dtype=dtype,
                                           chunks=(1, *moment_shape) if entries else None)
            text = group.create_dataset("text_embeddings", shape=(len(entries), *text_shape), dtype=dtype,
                                        chunks=(1, *text_shape) if entries else None)
            arrays = {"latent_moments": moments, "text_embeddings": text}
            if flipped:
                arrays["latent_moments_flipped"] = group.create_dataset(
                    "latent_moments_flipped", shape=(len(entries), *moment_shape), dtype=dtype, chunks=(1, *moment_shape))
            start = 0
            for name in shards[split]:
                with h5py.File(folder / name, "r") as shard:
                    count = shard["latent_moments"].shape[0]
                    for array_name, target in arrays.items():
                        target[start:start + count] = shard[array_name][()]
                start += count
    os.replace(temporary, final)
    for names in shards.values():
        for name in names:
            (folder / name).unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when the output is on the cache root's filesystem (no second copy of the cache), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
