"""The HDF5 cache of VAE latents and text embeddings, written once per dataset.

    latents.h5
        attrs: scaling_factor, base_model, dataset_sha256, resolution
        uncond_embedding            (1, tokens, dim)   embedding of the empty caption
        uncond_input_ids            (1, tokens)        token ids of the empty caption
        <split>/latent_moments      (N, 2C, h, w)      VAE posterior mean and log-variance
        train/latent_moments_flipped (N, 2C, h, w)     the same of the mirrored image (cache.flip_latents)
        <split>/text_embeddings     (N, tokens, dim)
        <split>/input_ids           (N, tokens)        caption token ids (to train the text encoder)
        <split>/record_ids, captions (N,) strings;  labels (N,) int, -1 when unknown

Caching the posterior (not one sample) keeps training's latent noise honest:
each step draws a fresh latent from it, as training from pixels would.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainflow.data.loading.transforms import SampleKey, step_seed
from trainflow.errors import UserFacingError

CACHE_FILE = "latents.h5"
FLIPPED = "latent_moments_flipped"
FLIP_STEP = 1_000_003  # step number of the flip draw in step_seed, apart from any transform's steps


def cache_file(cache_dir: str | Path) -> Path:
    path = Path(cache_dir) / CACHE_FILE
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the cache input must be the output of the build_cache stage")
    return path


def read_cache_attrs(cache_dir: str | Path) -> dict:
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return {key: (value.item() if hasattr(value, "item") else value) for key, value in handle.attrs.items()}


def read_uncond_embedding(cache_dir: str | Path) -> torch.Tensor:
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return torch.from_numpy(handle["uncond_embedding"][()]).float()


def read_uncond_input_ids(cache_dir: str | Path) -> torch.Tensor:
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return torch.from_numpy(handle["uncond_input_ids"][()]).long()


def split_size(cache_dir: str | Path, split: str) -> int:
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return len(handle[split]["record_ids"]) if split in handle else 0


class CachedLatents(Dataset):
    """One split's records as dicts: index, moments, text (embedding), input_ids; floats as float32.

    `index` is the record's position in the split; validation and test seed
    their noise with it, so it must travel with the record through any loader.

    Small splits are read into memory once; large ones are read per item with
    one file handle per DataLoader worker (h5py handles must not cross a fork).

    With mirrored latents in the split (cache.flip_latents) the training loader hands
    SampleKeys (`takes_sample_keys`), and each record is mirrored in a seeded half of
    its (seed, epoch) draws: a pure function of the key, so resume and worker count
    cannot change it. A plain index always gives the record as ingested.
    """

    def __init__(self, cache_dir: str | Path, split: str, in_memory_limit_bytes: int = 2 << 30) -> None:
        self.path = cache_file(cache_dir)
        self.split = split
        with h5py.File(self.path, "r") as handle:
            if split not in handle:
                raise UserFacingError(f"{self.path} has no '{split}' split; rebuild the cache from an ingest output")
            group = handle[split]
            self.length = len(group["record_ids"])
            self.takes_sample_keys = FLIPPED in group
            size = sum(group[name].nbytes for name in ("latent_moments", "text_embeddings", FLIPPED) if name in group)
            if size <= in_memory_limit_bytes:
                self._moments = torch.from_numpy(group["latent_moments"][()]).float()
                self._flipped = torch.from_numpy(group[FLIPPED][()]).float() if self.takes_sample_keys else None
                self._text = torch.from_numpy(group["text_embeddings"][()]).float()
                self._ids = torch.from_numpy(group["input_ids"][()]).long()
            else:
                self._moments = self._flipped = self._text = self._ids = None
        self._handle: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def mirrored(self, key: int | SampleKey) -> bool:
        """Whether this draw of the record uses its mirrored latents."""
        return self.takes_sample_keys and isinstance(key, SampleKey) and step_seed(key, FLIP_STEP) % 2 == 1

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, mirrored = int(key.index if isinstance(key, SampleKey) else key), self.mirrored(key)
        if self._moments is not None:
            moments = (self._flipped if mirrored else self._moments)[index]
            return {"index": torch.tensor(index), "moments": moments, "text": self._text[index],
                    "input_ids": self._ids[index]}
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")  # opened per worker process: h5py handles must not cross a fork
        group = self._handle[self.split]
        return {
            "index": torch.tensor(index),
            "moments": torch.from_numpy(np.asarray(group[FLIPPED if mirrored else "latent_moments"][index], dtype=np.float32)),
            "text": torch.from_numpy(np.asarray(group["text_embeddings"][index], dtype=np.float32)),
            "input_ids": torch.from_numpy(np.asarray(group["input_ids"][index], dtype=np.int64)),
        }


def sample_latents(moments: torch.Tensor, scaling_factor: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw scaled latents from cached posterior moments; with noise=None use the mean."""
    mean, logvar = moments.chunk(2, dim=1)
    if noise is None:
        return mean * scaling_factor
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return (mean + std * noise) * scaling_factor
