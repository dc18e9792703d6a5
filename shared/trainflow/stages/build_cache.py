"""Stage 2: encode every image once through the VAE and every caption once through the text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_directory
from trainflow.config import CacheConfig, ModelConfig, parse_section
from trainflow.data.supervised_cache import build_supervised_cache
from trainflow.data.manifest import SPLITS, manifest_sha256, read_manifest
from trainflow.devices import pick_device
from trainflow.diffusion.latent_cache import CACHE_FILE
from trainflow.diffusion.model_loading import encode_captions, load_pipeline_parts, resolve_pipeline_folder, tokenize_captions


def load_images(dataset_dir: Path, relative_paths: list[str]) -> torch.Tensor:
    """PNG snapshots -> float tensor in [-1, 1], shape (N, 3, H, W)."""
    arrays = []
    for relative in relative_paths:
        with Image.open(dataset_dir / relative) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_cache(
    dataset_dir: str, model_config: dict[str, Any], config: dict[str, Any], cache: ArtifactLike,
    task: str = "text_to_image",
) -> dict[str, Any]:
    """Encode or decode every record once into the cache folder, for all three splits.

    text_to_image: `latents.h5` (see trainflow.diffusion.latent_cache), VAE posteriors
    and text embeddings. Supervised tasks: `supervised.h5` and its shards (see
    trainflow.data.supervised_cache), decoded uint8 images/masks or feature tables,
    keyed by the dataset and cache settings (reused and resumable under cache.cache_root).
    Inputs: the ingest_split Dataset folder, the `model` and `cache` config sections.
    Fails with MissingWeightsError when the base model cannot be found.
    """
    cfg: CacheConfig = parse_section(CacheConfig, config, "the cache section")
    if task != "text_to_image":
        # Keyed by dataset and settings: reused from cache.cache_root when they match, resumed when a build was killed.
        with timed_stage("build_cache", cache):
            cache.metadata.update(build_supervised_cache(dataset_dir, cache.path, cfg))
        return dict(cache.metadata)
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    with timed_stage("build_cache", cache):
        device = pick_device(cfg.device)
        base_folder = resolve_pipeline_folder(model_cfg.base, model_cfg.revision)
        parts = load_pipeline_parts(base_folder)
        vae, text_encoder = parts.vae.to(device), parts.text_encoder.to(device)
        storage = np.float16 if cfg.storage_dtype == "float16" else np.float32
        dataset_root = Path(dataset_dir)
        dataset_sha256 = manifest_sha256(dataset_root)
        counts: dict[str, int] = {}
        with atomic_directory(cache.path) as staging, h5py.File(staging / CACHE_FILE, "w") as handle:
            handle.attrs["scaling_factor"] = float(vae.config.scaling_factor)
            handle.attrs["base_model"] = model_cfg.base
            handle.attrs["latent_channels"] = int(vae.config.latent_channels)
            handle.attrs["dataset_sha256"] = dataset_sha256
            handle["uncond_embedding"] = encode_captions(parts.tokenizer, text_encoder, [""], device).cpu().numpy().astype(storage)
            handle["uncond_input_ids"] = tokenize_captions(parts.tokenizer, [""]).numpy().astype(np.int64)
            for split in SPLITS:
                entries = read_manifest(dataset_root, split)
                counts[split] = len(entries)
                group = handle.create_group(split)
                strings = h5py.string_dtype()
                group.create_dataset("record_ids", data=[e.record_id for e in entries], dtype=strings)
                group.create_dataset("captions", data=[e.caption for e in entries], dtype=strings)
                group.create_dataset("labels", data=np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64))
                group.create_dataset("input_ids", data=tokenize_captions(parts.tokenizer, [e.caption for e in entries]).numpy().astype(np.int64)
                                     if entries else np.zeros((0, parts.tokenizer.model_max_length), dtype=np.int64))
                moments_ds = text_ds = None
                for start in tqdm(range(0, len(entries), cfg.batch_size), desc=f"cache: encoding {split}", unit="batch", mininterval=2.0, disable=None):
                    batch = entries[start : start + cfg.batch_size]
                    with torch.no_grad():
                        pixels = load_images(dataset_root, [e.image for e in batch]).to(device)
                        moments = vae.encode(pixels).latent_dist.parameters.cpu().numpy().astype(storage)
                        text = encode_captions(parts.tokenizer, text_encoder, [e.caption for e in batch], device).cpu().numpy().astype(storage)
                    if moments_ds is None:
                        moments_ds = group.create_dataset("latent_moments", shape=(len(entries), *moments.shape[1:]), dtype=storage, chunks=(1, *moments.shape[1:]))
                        text_ds = group.create_dataset("text_embeddings", shape=(len(entries), *text.shape[1:]), dtype=storage, chunks=(1, *text.shape[1:]))
                    moments_ds[start : start + len(batch)] = moments
                    text_ds[start : start + len(batch)] = text
        cache.metadata.update({f"num_{split}": n for split, n in counts.items()})
        cache.metadata.update({"dataset_sha256": dataset_sha256, "base_model": model_cfg.base, "scaling_factor": float(vae.config.scaling_factor), "device": str(device)})
    return dict(cache.metadata)
