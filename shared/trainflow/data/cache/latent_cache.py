"""The HDF5 cache of VAE latents and text embeddings, written once per dataset.

    latents.h5
        attrs: scaling_factor, base_model, dataset_sha256, latent_channels, cache_key, family (sd | sdxl)
        uncond_embedding            (1, tokens, dim)   embedding of the empty caption
        uncond_input_ids            (1, tokens)        token ids of the empty caption
        uncond_pooled_embedding, uncond_input_ids_2    sdxl: the same for the second text encoder
        <split>/latent_moments      (N, 2C, h, w)      VAE posterior mean and log-variance
        train/latent_moments_flipped (N, 2C, h, w)     the same of the mirrored image (cache.flip_latents)
        <split>/loss_masks          (N, 1, h, w)       per-latent loss weight in 0..1 (when ingest found masks)
        <split>/text_embeddings     (N, tokens, dim)   sdxl: both encoders' penultimate states, concatenated
        <split>/input_ids           (N, tokens)        caption token ids (to train the text encoder)
        <split>/pooled_text_embeddings (N, dim2), input_ids_2 (N, tokens), time_ids (N, 6)   sdxl only
        <split>/prior               (N,) uint8         1 for class images (prior preservation), train only
        <split>/record_ids, captions (N,) strings;  labels (N,) int, -1 when unknown
    A split of several image sizes (ingest.buckets) keeps its latent arrays per size instead:
        <split>/bucket_sizes (B, 2) pixel (h, w);  bucket_of, bucket_row (N,);  buckets/<b>/latent_moments ...

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
LATENT_NAMES = ("latent_moments", FLIPPED, "loss_masks")  # per bucket
RECORD_ARRAYS = ("text_embeddings", "input_ids", "pooled_text_embeddings", "input_ids_2", "time_ids", "prior")


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


def read_uncond_record(cache_dir: str | Path) -> dict[str, torch.Tensor]:
    """The empty caption as a batch of one: text and input_ids, and for sdxl pooled and input_ids_2."""
    names = {"uncond_embedding": "text", "uncond_input_ids": "input_ids", "uncond_pooled_embedding": "pooled",
             "uncond_input_ids_2": "input_ids_2"}
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return {key: _tensor(handle[name][()]) for name, key in names.items() if name in handle}


def has_buckets(cache_dir: str | Path) -> bool:
    """Whether any split holds images of several sizes (ingest.buckets)."""
    with h5py.File(cache_file(cache_dir), "r") as handle:
        return any("bucket_of" in handle[split] for split in handle if isinstance(handle[split], h5py.Group))


class CachedLatents(Dataset):
    """One split's records as dicts: index, moments, text (embedding), input_ids; floats as float32.
    As the cache has them also: pooled and input_ids_2 (sdxl), time_ids (sdxl), loss_mask (ingest masks),
    prior (class images for prior preservation).

    `index` is the record's position in the split; validation and test seed
    their noise with it, so it must travel with the record through any loader.
    `bucket_ids` (one int per record) names each record's latent size; the engine's
    batch plan keeps every batch inside one bucket when there are several.

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
            self.record_names = [n for n in RECORD_ARRAYS if n in group]
            self.prior_flags = group["prior"][()].astype(bool) if "prior" in group else None  # class images
            buckets = _bucket_groups(group)
            self.latent_names = [n for n in LATENT_NAMES if n in buckets[0]]
            self.takes_sample_keys = FLIPPED in self.latent_names
            if "bucket_of" in group:
                self.bucket_ids, self._rows = group["bucket_of"][()], group["bucket_row"][()]
                self.bucket_sizes = [tuple(int(v) for v in hw) for hw in group["bucket_sizes"][()]]
            else:
                self.bucket_ids, self._rows = np.zeros(self.length, dtype=np.int64), np.arange(self.length)
                self.bucket_sizes = []
            size = sum(g[n].nbytes for g in buckets for n in self.latent_names) + sum(group[n].nbytes for n in self.record_names)
            self._records = ({name: _tensor(group[name][()]) for name in self.record_names}
                             if size <= in_memory_limit_bytes else None)
            self._latents = ([{name: _tensor(g[name][()]) for name in self.latent_names} for g in buckets]
                             if size <= in_memory_limit_bytes else None)
        self._handle: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def mirrored(self, key: int | SampleKey) -> bool:
        """Whether this draw of the record uses its mirrored latents."""
        return self.takes_sample_keys and isinstance(key, SampleKey) and step_seed(key, FLIP_STEP) % 2 == 1

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, mirrored = int(key.index if isinstance(key, SampleKey) else key), self.mirrored(key)
        bucket, row = int(self.bucket_ids[index]), int(self._rows[index])
        if self._latents is not None:
            latents, records = self._latents[bucket], {name: values[index] for name, values in self._records.items()}
            latents = {name: values[row] for name, values in latents.items()}
        else:
            if self._handle is None:
                self._handle = h5py.File(self.path, "r")  # opened per worker process: h5py handles must not cross a fork
            group = self._handle[self.split]
            source = _bucket_groups(group)[bucket]
            latents = {name: _tensor(np.asarray(source[name][row])) for name in self.latent_names}
            records = {name: _tensor(np.asarray(group[name][index])) for name in self.record_names}
        item = {"index": torch.tensor(index), "moments": latents[FLIPPED if mirrored else "latent_moments"]}
        if "loss_masks" in latents:
            item["loss_mask"] = torch.flip(latents["loss_masks"], dims=[-1]) if mirrored else latents["loss_masks"]
        item["text"] = records.pop("text_embeddings")
        item["input_ids"] = records.pop("input_ids")
        if "prior" in records:
            item["prior"] = records.pop("prior").bool()
        if "pooled_text_embeddings" in records:
            item["pooled"] = records.pop("pooled_text_embeddings")
        item.update(records)  # input_ids_2, time_ids
        return item


def _tensor(values: np.ndarray) -> torch.Tensor:
    """float32 for floating arrays (the cache may store float16), int64 for ids."""
    tensor = torch.from_numpy(values)
    return tensor.float() if tensor.is_floating_point() else tensor.long()


def _bucket_groups(group: h5py.Group) -> list[h5py.Group]:
    """Where each bucket's latent arrays are: buckets/<b>, or the split itself when it has one size."""
    if "buckets" not in group:
        return [group]
    return [group["buckets"][str(b)] for b in range(len(group["buckets"]))]


def sample_latents(moments: torch.Tensor, scaling_factor: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw scaled latents from cached posterior moments; with noise=None use the mean."""
    mean, logvar = moments.chunk(2, dim=1)
    if noise is None:
        return mean * scaling_factor
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return (mean + std * noise) * scaling_factor
