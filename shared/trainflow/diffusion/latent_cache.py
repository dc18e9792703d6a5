"""The HDF5 cache of VAE latents and text embeddings, written once per dataset.

    latents.h5
        attrs: scaling_factor, base_model, dataset_sha256, resolution
        uncond_embedding            (1, tokens, dim)   embedding of the empty caption
        uncond_input_ids            (1, tokens)        token ids of the empty caption
        <split>/latent_moments      (N, 2C, h, w)      VAE posterior mean and log-variance
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

from trainflow.errors import UserFacingError

CACHE_FILE = "latents.h5"


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
    """

    def __init__(self, cache_dir: str | Path, split: str, in_memory_limit_bytes: int = 2 << 30) -> None:
        self.path = cache_file(cache_dir)
        self.split = split
        with h5py.File(self.path, "r") as handle:
            if split not in handle:
                raise UserFacingError(f"{self.path} has no '{split}' split; rebuild the cache from an ingest output")
            group = handle[split]
            self.length = len(group["record_ids"])
            size = group["latent_moments"].nbytes + group["text_embeddings"].nbytes
            if size <= in_memory_limit_bytes:
                self._moments = torch.from_numpy(group["latent_moments"][()]).float()
                self._text = torch.from_numpy(group["text_embeddings"][()]).float()
                self._ids = torch.from_numpy(group["input_ids"][()]).long()
            else:
                self._moments = self._text = self._ids = None
        self._handle: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._moments is not None:
            return {"index": torch.tensor(index), "moments": self._moments[index], "text": self._text[index],
                    "input_ids": self._ids[index]}
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")  # opened per worker process: h5py handles must not cross a fork
        group = self._handle[self.split]
        return {
            "index": torch.tensor(index),
            "moments": torch.from_numpy(np.asarray(group["latent_moments"][index], dtype=np.float32)),
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
