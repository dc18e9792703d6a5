"""The HDF5 cache for supervised tasks: every image decoded once, so training never decodes an image.

    supervised.h5          the index
        attrs: info (JSON: task, kind, class/target/feature names, resolution), dataset_sha256,
               stats (JSON: input mean/std, target mean/std, class counts of the train split),
               cache_key, format_version, shards (JSON: {split: [[file, records], ...]}),
               columns (JSON: {name: [dtype, shape of one record]}), shard_root, dataset_dir
        <split>/record_ids (N,) strings
    shards/<split>-00000.h5   (see trainflow.data.cache.shards) one dataset per column:
        images  (n, 3, H, W) uint8    image tasks          masks    (n, H, W) uint8   segmentation
        labels  (n,)         int64    -1 when absent       targets  (n, T)    float32 regression
        features (n, F)      float32  table tasks

Shard file names are relative to `shard_root` (empty: the index's folder). With
cache.cache_root the shards stay in the keyed folder there and the artifact holds
only the index. Statistics come from the train split only, so nothing about
val/test leaks into the model; they are summed shard by shard (exact integer
sums for pixels), so a resumed build gives the same numbers as a clean one.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from trainflow.atomic_files import atomic_directory, atomic_file_path
from trainflow.config import CacheConfig
from trainflow.config.data_loading import DataLoadingConfig, TransformsConfig
from trainflow.data.loading import modes as loading_modes
from trainflow.data.cache.build_folder import FORMAT_VERSION, CacheBuildFolder, cache_key
from trainflow.data.cache.shards import ShardSettings, ShardTable, memmap_columns, plan_shards, shard_name, write_shard
from trainflow.data.cache.statistics import combine_shard_statistics, shard_statistics
from trainflow.data.manifest import SPLITS, ManifestEntry, manifest_sha256, read_dataset_info, read_manifest
from trainflow.data.loading.supervised_batches import as_sample_keys, build_record_batch
from trainflow.data.loading.transforms import build_image_transform
from trainflow.errors import ConfigError, UserFacingError

CACHE_FILE = "supervised.h5"


# ================================================================ building
def _decode(root: Path, entries: list[ManifestEntry], kind: str) -> dict[str, np.ndarray]:
    """Decode a shard's records; PNG decoding releases the GIL, so a few threads share the work."""
    if kind != "image" or len(entries) < 64:
        return loading_modes.manifest_columns(root, entries, kind)
    parts = [entries[i: i + 256] for i in range(0, len(entries), 256)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda part: loading_modes.manifest_columns(root, part, kind), parts))
    return {name: np.concatenate([d[name] for d in decoded]) for name in decoded[0]}


def _write_shards(build: CacheBuildFolder, root: Path, info: dict, splits: dict[str, list[ManifestEntry]],
                  settings: ShardSettings) -> tuple[dict[str, list], dict[str, Any], dict[str, list]]:
    """Write every shard a previous attempt did not finish; returns (shard lists, train stats, column schema)."""
    completed = build.completed_shards()
    probe = loading_modes.manifest_columns(root, splits["train"][:1], info["kind"])
    record_bytes = sum(array[0].nbytes for array in probe.values())
    schema = {name: [array.dtype.str, list(array.shape[1:])] for name, array in probe.items()}
    shards: dict[str, list] = {}
    for split in SPLITS:
        entries = splits[split]
        shards[split] = []
        for number, (start, stop) in enumerate(plan_shards(len(entries), record_bytes, settings)):
            name = shard_name(split, number)
            shards[split].append([name, stop - start])
            if name in completed:
                continue
            columns = _decode(root, entries[start:stop], info["kind"])
            write_shard(build.folder / name, columns, settings)
            stats = shard_statistics(columns, len(info.get("class_names") or [])) if split == "train" else None
            build.mark_complete(completed, name, {"records": stop - start, "stats": stats})
    train_stats = combine_shard_statistics([completed[name]["stats"] for name, _ in shards["train"]])
    return shards, train_stats, schema


def _write_index(path: Path, attrs: dict[str, Any], record_ids: dict[str, list[str]]) -> None:
    with atomic_file_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = value
        for split, ids in record_ids.items():
            handle.create_group(split).create_dataset("record_ids", data=ids, dtype=h5py.string_dtype())


def build_supervised_cache(dataset_dir: str | Path, output_dir: str | Path, cfg: CacheConfig | None = None) -> dict[str, Any]:
    """Build (or reuse, or finish) the cache of an ingest_split Dataset folder into `output_dir`.

    Returns the artifact metadata: counts, dataset_sha256, kind, cache_key, cache_location,
    reused. Raises UserFacingError when the train split is empty or snapshots differ in size.
    """
    cfg = cfg or CacheConfig()
    root, output = Path(dataset_dir).resolve(), Path(output_dir)
    info = read_dataset_info(root)
    splits = {split: read_manifest(root, split) for split in SPLITS}
    if not splits["train"]:
        raise UserFacingError("the train split is empty; ingest more records or change ingest.split")
    settings = ShardSettings.from_config(cfg)
    key = cache_key(root, "supervised", settings.key_payload())
    dataset_sha256 = manifest_sha256(root)
    with CacheBuildFolder(output, key, "supervised", cfg.cache_root) as build:
        index = build.folder / CACHE_FILE
        reused = index.is_file() and _index_key(index) == key
        if not reused:
            shards, stats, schema = _write_shards(build, root, info, splits, settings)
            _write_index(index, {
                "info": json.dumps(info), "stats": json.dumps(stats), "dataset_sha256": dataset_sha256,
                "cache_key": key, "format_version": FORMAT_VERSION, "shards": json.dumps(shards),
                "columns": json.dumps(schema), "shard_root": "", "dataset_dir": str(root),
            }, {split: [e.record_id for e in entries] for split, entries in splits.items()})
        if build.shared:
            with atomic_directory(output) as staging:
                shutil.copyfile(index, staging / CACHE_FILE)
                with h5py.File(staging / CACHE_FILE, "r+") as handle:
                    handle.attrs["shard_root"] = str(build.folder.resolve())
        else:
            build.move_to_output()
    location = build.folder.resolve() if build.shared else output.resolve()
    return {**{f"num_{split}": len(entries) for split, entries in splits.items()}, "dataset_sha256": dataset_sha256,
            "kind": info["kind"], "cache_key": key, "cache_location": str(location), "reused": reused}


def _index_key(path: Path) -> str | None:
    with h5py.File(path, "r") as handle:
        return handle.attrs.get("cache_key")


# ================================================================ reading
@dataclasses.dataclass(frozen=True)
class CacheIndex:
    path: Path
    info: dict[str, Any]
    stats: dict[str, Any]
    tables: dict[str, ShardTable]
    dataset_dir: str | None

    def table(self, split: str) -> ShardTable:
        if split not in self.tables:
            raise UserFacingError(f"{self.path} has no '{split}' split; rebuild the cache from an ingest output")
        return self.tables[split]

    def record_ids(self, split: str) -> list[str]:
        with h5py.File(self.path, "r") as handle:
            return [r.decode() if isinstance(r, bytes) else r for r in handle[split]["record_ids"][()]]


def read_cache_index(cache_dir: str | Path) -> CacheIndex:
    """The index of a supervised cache folder; UserFacingError when it is missing or of another format."""
    path = Path(cache_dir) / CACHE_FILE
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the cache input must be the output of the build_cache stage "
                              "for a supervised task")
    with h5py.File(path, "r") as handle:
        attrs = dict(handle.attrs)
    if "info" not in attrs:
        raise UserFacingError(f"{path} is not a supervised cache; the task and the cache do not match")
    if "shards" not in attrs:
        raise UserFacingError(f"{path} was written by an older trainflow (no shards); run build_cache again")
    shard_root = Path(attrs["shard_root"]) if attrs["shard_root"] else path.parent
    columns = {name: (dtype, tuple(shape)) for name, (dtype, shape) in json.loads(attrs["columns"]).items()}
    tables = {split: ShardTable(tuple(shard_root / name for name, _ in listed), tuple(n for _, n in listed), columns)
              for split, listed in json.loads(attrs["shards"]).items()}
    return CacheIndex(path, json.loads(attrs["info"]), json.loads(attrs["stats"]), tables, attrs.get("dataset_dir"))


def read_supervised_attrs(cache_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(info, train statistics) of a supervised cache."""
    index = read_cache_index(cache_dir)
    return index.info, index.stats


def _decoded_bytes(table: ShardTable) -> int:
    per_record = sum(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)) for dtype, shape in table.columns.values())
    return per_record * len(table)


def open_records(index: CacheIndex, split: str, loading: DataLoadingConfig, dataset_dir: str | Path | None = None):
    """The record source for `split` in the configured loading mode (see trainflow.data.loading.modes)."""
    table = index.table(split)
    mode = loading.mode
    if mode == "streaming":
        raise ConfigError("train.data_loading.mode: streaming reads shards in order, so a training epoch cannot resume "
                          "mid-way exactly; for data larger than memory use memmap or cached (streaming is for "
                          "evaluation and inference, trainflow.data.cache.supervised_cache.open_stream)")
    if mode == "lazy":
        return loading_modes.LazyImageRecords(dataset_dir or index.dataset_dir or "", split, index.info["kind"])
    table.check_present()
    if mode == "auto":
        small = _decoded_bytes(table) <= loading.eager_max_mb * 2**20
        mode = "eager" if small else "memmap" if memmap_columns(table) is not None else "cached"
    if mode == "eager":
        return loading_modes.EagerRecords(table)
    if mode == "memmap":
        contiguous = memmap_columns(table) is not None
        return loading_modes.MemmapRecords(table) if contiguous else loading_modes.ShardRecords(table, rdcc_nbytes=0)
    return loading_modes.LruRecords(loading_modes.ShardRecords(table), int(loading.lru_budget_mb * 2**20))


class _Columns(collections.abc.Mapping):
    """Whole columns as tensors, read on first use (labels for class weights, tables for baselines)."""

    def __init__(self, records) -> None:
        self.records, self._read = records, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.records.names:
            raise KeyError(name)
        if name not in self._read:
            self._read[name] = torch.from_numpy(np.array(self.records.column(name)))
        return self._read[name]

    def __iter__(self):
        return iter(self.records.names)

    def __len__(self) -> int:
        return len(self.records.names)


class SupervisedCache(Dataset):
    """One split as dicts (see trainflow.data.loading.supervised_batches): index, inputs, label / targets / mask.

    transforms: train.transforms (None: images as cached). loading: train.data_loading
    (None: defaults, i.e. eager for splits that fit). With random augmentation
    `takes_sample_keys` is True and the batch sampler should pass SampleKeys
    (trainflow.data.loading.loader_factory does), so each record's augmentation is fixed
    by (seed, epoch, index). Batches read through `__getitems__` in one go.
    """

    def __init__(self, cache_dir: str | Path, split: str, transforms: TransformsConfig | None = None,
                 loading: DataLoadingConfig | None = None, seed: int = 0, dataset_dir: str | Path | None = None) -> None:
        self.index = read_cache_index(cache_dir)
        self.split, self.seed = split, seed
        self.records = open_records(self.index, split, loading or DataLoadingConfig(), dataset_dir)
        image = self.index.info["kind"] == "image"
        self.transform = build_image_transform(transforms, split, self.index.info.get("resolution")) if image else None
        self.takes_sample_keys = bool(self.transform is not None and self.transform.random)
        self.arrays = _Columns(self.records)

    @property
    def record_ids(self) -> list[str]:
        return self.index.record_ids(self.split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitems__(self, keys: list) -> Any:
        sample_keys = as_sample_keys(keys, self.seed)
        indices = np.array([key.index for key in sample_keys], dtype=np.int64)
        return build_record_batch(self.records.rows(indices), sample_keys, self.transform)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        if not isinstance(key, tuple):
            if not -len(self) <= int(key) < len(self):
                raise IndexError(key)
            key = int(key) % len(self)
        return self.__getitems__([key])[0]


def open_stream(cache_dir: str | Path, split: str, batch_size: int, transforms: TransformsConfig | None = None,
                loading: DataLoadingConfig | None = None, seed: int = 0, shuffle: bool = False, rank: int = 0,
                world_size: int = 1):
    """A SupervisedStream over `split` (evaluation, inference, one pass over data larger than memory)."""
    from trainflow.data.loading.streaming import SupervisedStream

    index = read_cache_index(cache_dir)
    table = index.table(split)
    table.check_present()
    image = index.info["kind"] == "image"
    transform = build_image_transform(transforms, split, index.info.get("resolution")) if image else None
    return SupervisedStream(table, batch_size, transform, seed, shuffle, rank=rank, world_size=world_size,
                            block_records=(loading or DataLoadingConfig()).stream_block_records)
