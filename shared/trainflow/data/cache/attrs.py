"""Facts every cache records about what it was built from."""

from __future__ import annotations

from pathlib import Path

import h5py

from trainflow.errors import UserFacingError

CACHE_FILES = ("latents.h5", "supervised.h5")  # the formats of trainflow.data.cache


def cache_path(cache_dir: str | Path) -> Path:
    """The cache's HDF5 file: one of CACHE_FILES, else the one .h5 file at the top of `cache_dir`.

    A task with a cache format of its own (trainflow.tasks) writes one .h5 file there, so this module needs no
    list of tasks' formats. UserFacingError when there is none (or several unknown ones).
    """
    for name in CACHE_FILES:
        path = Path(cache_dir) / name
        if path.is_file():
            return path
    others = sorted(path for path in Path(cache_dir).glob("*.h5") if path.is_file())
    if len(others) == 1:
        return others[0]
    raise UserFacingError(f"{cache_dir} holds no cache file ({' or '.join(CACHE_FILES)}, or the one .h5 file of "
                          "a task's own cache format); the cache input must be the output of the build_cache stage")


def has_cache(cache_dir: str | Path) -> bool:
    """Whether `cache_dir` holds a finished cache (build_cache writes it whole or not at all)."""
    try:
        cache_path(cache_dir)
    except UserFacingError:
        return False
    return True


def read_cache_dataset_hash(cache_dir: str | Path) -> str:
    """The dataset manifest's sha256 the cache was built from (checkpoints are tied to it)."""
    with h5py.File(cache_path(cache_dir), "r") as handle:
        value = handle.attrs.get("dataset_sha256")
    if value is None:
        raise UserFacingError(f"{cache_path(cache_dir)} does not record its dataset; rebuild it with this trainflow version")
    return str(value)
