"""Shard files of a cache: how records are cut into files, written atomically, and read back per process.

    shards/<split>-00000.h5    one HDF5 file per shard: a dataset per column
                               (images, masks, labels, targets, features), whole records per chunk

A shard is written to a temporary name and renamed, so a shard file that exists
is complete: a killed build resumes from the shards that exist. Readers open
their own file handles in each process (h5py handles must not cross a fork).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trainflow.atomic_files import atomic_file_path
from trainflow.config import CacheConfig
from trainflow.errors import UserFacingError

SHARD_FOLDER = "shards"


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """The cache settings that change the files (and so the cache key)."""

    compression: str = "none"
    compression_level: int = 4
    layout: str = "chunked"
    chunk_kib: int = 64
    shard_records: int = 50_000
    shard_bytes: int = 1 << 30

    @classmethod
    def from_config(cls, cfg: CacheConfig) -> "ShardSettings":
        return cls(cfg.compression, cfg.compression_level, cfg.layout, cfg.chunk_kib, cfg.shard_records,
                   int(cfg.shard_mb * 2**20))

    def key_payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_shards(count: int, record_bytes: int, settings: ShardSettings) -> list[tuple[int, int]]:
    """[start, stop) record ranges: at most shard_records records and shard_bytes decoded bytes each."""
    per_shard = max(1, min(settings.shard_records, settings.shard_bytes // max(record_bytes, 1)))
    return [(start, min(start + per_shard, count)) for start in range(0, count, per_shard)]


def shard_name(split: str, number: int) -> str:
    return f"{SHARD_FOLDER}/{split}-{number:05d}.h5"


def _dataset_options(array: np.ndarray, settings: ShardSettings) -> dict[str, Any]:
    if settings.layout == "contiguous":
        return {}
    row_bytes = max(int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize, 1)
    rows = max(1, min(len(array), settings.chunk_kib * 1024 // row_bytes))
    options: dict[str, Any] = {"chunks": (rows, *array.shape[1:])}
    if settings.compression == "gzip":
        options.update(compression="gzip", compression_opts=settings.compression_level)
    elif settings.compression == "lzf":
        options["compression"] = "lzf"
    return options


def write_shard(path: Path, columns: dict[str, np.ndarray], settings: ShardSettings) -> None:
    """Write one shard file atomically: every column holds the same records in the same order."""
    with atomic_file_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for name, array in columns.items():
            handle.create_dataset(name, data=array, **_dataset_options(array, settings))


@dataclasses.dataclass(frozen=True)
class ShardTable:
    """One split's shards: their files (absolute) and record counts, in record order."""

    paths: tuple[Path, ...]
    counts: tuple[int, ...]
    columns: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape of one record)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(sum(self.counts))

    def check_present(self) -> None:
        missing = [str(path) for path in self.paths if not path.is_file()]
        if missing:
            raise UserFacingError(
                f"the cache shard {missing[0]} is missing ({len(missing)} of {len(self.paths)} shards); the cache "
                "lives under cache.cache_root, which must be mounted at the same path where the cache is read "
                "(or leave cache.cache_root unset to keep the cache inside the artifact)")

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, row within the shard) of each record index."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        return shard, indices - self.offsets[shard]


class ShardReader:
    """Reads rows of one split's shards through h5py, one set of open files per process.

    rdcc_nbytes sets h5py's chunk cache per open dataset (0 turns it off: every
    read goes to the file, the page cache does the caching).
    """

    def __init__(self, table: ShardTable, rdcc_nbytes: int | None = None, max_open_files: int = 32) -> None:
        self.table = table
        self.rdcc_nbytes = rdcc_nbytes
        self.max_open_files = max_open_files  # each open file keeps its own chunk cache: bound them
        self._files: dict[int, h5py.File] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}, "_pid": -1}  # a worker opens its own files

    def _file(self, number: int) -> h5py.File:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()  # after a fork: never reuse the parent's handles
        handle = self._files.pop(number, None)
        if handle is None:
            while len(self._files) >= self.max_open_files:
                self._files.pop(next(iter(self._files))).close()  # the least recently used
            options = {} if self.rdcc_nbytes is None else {"rdcc_nbytes": self.rdcc_nbytes}
            handle = h5py.File(self.table.paths[number], "r", **options)
        self._files[number] = handle  # most recently used last
        return handle

    def read_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a column, across shard boundaries."""
        dtype, shape = self.table.columns[name]
        parts, offsets = [], self.table.offsets
        for number in range(len(self.table.paths)):
            low, high = max(start, offsets[number]), min(stop, offsets[number + 1])
            if low < high:
                parts.append(self._file(number)[name][low - offsets[number]: high - offsets[number]])
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    def read_rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` (any order, repeats allowed), read in increasing order per shard."""
        dtype, shape = self.table.columns[name]
        out = np.empty((len(indices), *shape), dtype=dtype)
        shards, rows = self.table.locate(np.asarray(indices, dtype=np.int64))
        for number in np.unique(shards):
            where = np.flatnonzero(shards == number)
            wanted = rows[where]
            unique, inverse = np.unique(wanted, return_inverse=True)  # h5py reads increasing, distinct rows
            dataset = self._file(int(number))[name]
            out[where] = dataset[unique][inverse]
        return out

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}


def memmap_columns(table: ShardTable) -> list[dict[str, np.memmap]] | None:
    """Per shard, each column as a read-only numpy memmap; None when a column is chunked (not contiguous)."""
    mapped = []
    for path in table.paths:
        with h5py.File(path, "r") as handle:
            offsets = {name: handle[name].id.get_offset() for name in table.columns}
            if any(offset is None for offset in offsets.values()):
                return None
            mapped.append({name: np.memmap(path, dtype=np.dtype(table.columns[name][0]), mode="r", offset=offsets[name],
                                           shape=handle[name].shape) for name in table.columns})
    return mapped
