"""Where a split's decoded records come from while training: one class per loading mode.

    eager    every column of the split in memory, read once
    memmap   numpy memmaps of a contiguous (uncompressed) cache: the OS pages records in and out;
             a chunked cache is read through h5py with its chunk cache off instead
    cached   h5py reads behind an LRU of decoded records, bounded in bytes (per loader process)
    lazy     the ingest PNG snapshots, decoded on access (no cache file needed)
    streaming  see trainflow.data.loading.streaming (an IterableDataset over shards)

Each source answers `rows(indices) -> {column: array}` for a batch of record
indices, and `column(name)` for a whole column. Files are opened lazily in the
process that reads them, so DataLoader workers never share a handle.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainflow.data.cache.shards import ShardReader, ShardTable, memmap_columns
from trainflow.data.manifest import ManifestEntry, read_manifest
from trainflow.data.snapshot_images import read_image, read_mask
from trainflow.errors import UserFacingError


def decode_image(root: Path, relative: str) -> np.ndarray:
    """An ingest PNG snapshot as (3, H, W) uint8, for the supervised cache build and lazy mode."""
    return read_image(root, relative).transpose(2, 0, 1)


def decode_mask(root: Path, relative: str) -> np.ndarray:
    """A segmentation mask PNG as (H, W) uint8 class ids."""
    return read_mask(root, relative)


def manifest_columns(root: Path, entries: list[ManifestEntry], kind: str, decode: bool = True) -> dict[str, np.ndarray]:
    """The cache columns of manifest entries: labels, targets, features, and (decode=True) images and masks."""
    columns: dict[str, np.ndarray] = {"labels": np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64)}
    if kind == "image" and decode and entries:
        images = [decode_image(root, e.image) for e in entries]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise UserFacingError(f"the ingest snapshots in {root} have different sizes {sorted(shapes)}; "
                                  "re-run ingest_split, which resizes every image to ingest.resolution")
        columns["images"] = np.stack(images)
        if entries[0].mask:
            columns["masks"] = np.stack([decode_mask(root, e.mask) for e in entries])
    elif kind != "image":
        columns["features"] = np.array([e.features for e in entries], dtype=np.float32).reshape(len(entries), -1)
    if entries and entries[0].targets is not None:
        columns["targets"] = np.array([e.targets for e in entries], dtype=np.float32).reshape(len(entries), -1)
    return columns


class RecordSource(Protocol):
    names: tuple[str, ...]

    def __len__(self) -> int: ...

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...

    def column(self, name: str) -> np.ndarray: ...


class EagerRecords:
    """The whole split in memory (read once, shard by shard)."""

    def __init__(self, table: ShardTable) -> None:
        reader = ShardReader(table)
        self.columns = {name: reader.read_range(name, 0, len(table)) for name in table.columns}
        reader.close()
        self.names = tuple(self.columns)
        self.length = len(table)

    def __len__(self) -> int:
        return self.length

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {name: array[indices] for name, array in self.columns.items()}

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]


class ShardRecords:
    """Rows read from the shard files on every access (h5py; `rdcc_nbytes=0` turns its chunk cache off)."""

    def __init__(self, table: ShardTable, rdcc_nbytes: int | None = None) -> None:
        self.reader = ShardReader(table, rdcc_nbytes)
        self.names = tuple(table.columns)
        self.length = len(table)

    def __len__(self) -> int:
        return self.length

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.reader.read_rows(name, indices) for name in self.names}

    def column(self, name: str) -> np.ndarray:
        return self.reader.read_range(name, 0, self.length)


class MemmapRecords:
    """Numpy memmaps of a contiguous cache's arrays, mapped in the process that reads them."""

    def __init__(self, table: ShardTable) -> None:
        self.table = table
        self.names = tuple(table.columns)
        self._maps: list[dict[str, np.memmap]] | None = None
        self._pid = -1
        if memmap_columns(table) is None:
            raise UserFacingError("train.data_loading.mode memmap: this cache is chunked; memory-mapping needs "
                                  "cache.layout: contiguous (rebuild the cache), or use mode cached")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None, "_pid": -1}  # never pickle the mapped pages themselves

    def __len__(self) -> int:
        return len(self.table)

    def _mapped(self) -> list[dict[str, np.memmap]]:
        if self._maps is None or self._pid != os.getpid():
            self._maps, self._pid = memmap_columns(self.table), os.getpid()
        return self._maps  # type: ignore[return-value]

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        maps = self._mapped()
        shards, rows = self.table.locate(np.asarray(indices, dtype=np.int64))
        out = {}
        for name in self.names:
            dtype, shape = self.table.columns[name]
            column = np.empty((len(indices), *shape), dtype=dtype)
            for number in np.unique(shards):
                where = np.flatnonzero(shards == number)
                column[where] = maps[int(number)][name][rows[where]]
            out[name] = column
        return out

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(shard[name]) for shard in self._mapped()]) if self.table.paths else \
            np.zeros((0, *self.table.columns[name][1]), dtype=self.table.columns[name][0])


class LruRecords:
    """Decoded records of another source kept in least-recently-used order under a byte budget.

    The budget holds per process: each DataLoader worker keeps its own records.
    """

    def __init__(self, source: RecordSource, budget_bytes: int) -> None:
        self.source, self.budget_bytes = source, budget_bytes
        self.names = source.names
        self._records: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self.source)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        missing = sorted({int(i) for i in indices if int(i) not in self._records})
        if missing:
            fetched = self.source.rows(np.array(missing, dtype=np.int64))
            for position, index in enumerate(missing):
                record = {name: fetched[name][position] for name in self.names}
                self._records[index] = record
                self.bytes_held += sum(value.nbytes for value in record.values())
        for index in indices:
            self._records.move_to_end(int(index))
        picked = [self._records[int(index)] for index in indices]
        out = {name: np.stack([record[name] for record in picked]) for name in self.names}
        while self.bytes_held > self.budget_bytes and len(self._records) > 1:
            _, evicted = self._records.popitem(last=False)
            self.bytes_held -= sum(value.nbytes for value in evicted.values())
        return out

    def column(self, name: str) -> np.ndarray:
        return self.source.column(name)


class LazyImageRecords:
    """The split's ingest PNG snapshots, decoded on every access (labels and tables from the manifest)."""

    def __init__(self, dataset_dir: str | Path, split: str, kind: str) -> None:
        self.root = Path(dataset_dir)
        if not (self.root / "manifest.jsonl").is_file():
            raise UserFacingError(
                f"train.data_loading.mode lazy decodes the ingest snapshots, but {self.root} (where build_cache read "
                "them) is not reachable here; mount the dataset there or use mode eager, cached or memmap")
        self.entries = read_manifest(self.root, split)
        self.kind = kind
        self.small = manifest_columns(self.root, self.entries, kind, decode=False)
        self.names = tuple(self.small) + (("images", "masks") if self.entries and self.entries[0].mask
                                          else ("images",) if kind == "image" else ())

    def __len__(self) -> int:
        return len(self.entries)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        decoded = manifest_columns(self.root, [self.entries[int(i)] for i in indices], self.kind)
        return {name: decoded[name] for name in self.names if name in decoded}

    def column(self, name: str) -> np.ndarray:
        if name in self.small:
            return self.small[name]
        return self.rows(np.arange(len(self.entries)))[name]
