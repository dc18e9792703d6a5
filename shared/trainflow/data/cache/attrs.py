"""Facts every cache records about what it was built from."""

from __future__ import annotations

from pathlib import Path

import h5py

from trainflow.errors import UserFacingError

CACHE_FILES = ("latents.h5", "supervised.h5", "tokens.h5")


def cache_path(cache_dir: str | Path) -> Path:
    for name in CACHE_FILES:
        path = Path(cache_dir) / name
        if path.is_file():
            return path
    raise UserFacingError(f"{cache_dir} holds no cache file ({' or '.join(CACHE_FILES)}); "
                          "the cache input must be the output of the build_cache stage")


def read_cache_dataset_hash(cache_dir: str | Path) -> str:
    """The dataset manifest's sha256 the cache was built from (checkpoints are tied to it)."""
    with h5py.File(cache_path(cache_dir), "r") as handle:
        value = handle.attrs.get("dataset_sha256")
    if value is None:
        raise UserFacingError(f"{cache_path(cache_dir)} does not record its dataset; rebuild it with this trainflow version")
    return str(value)
