"""The HDF5 cache for supervised tasks: every image decoded once, so training never decodes an image.

    supervised.h5
        attrs: info (JSON: task, kind, class/target/feature names, resolution),
               dataset_sha256, stats (JSON: input mean/std, target mean/std, class counts of the train split)
        <split>/images     (N, 3, H, W) uint8     image tasks
        <split>/masks      (N, H, W)    uint8     segmentation (class ids)
        <split>/features   (N, F)       float32   table tasks
        <split>/labels     (N,)         int64     classification (-1 when absent)
        <split>/targets    (N, T)       float32   regression
        <split>/record_ids (N,)         strings

Statistics come from the train split only, so nothing about val/test leaks into the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainflow.data.cache_attrs import cache_path
from trainflow.data.manifest import SPLITS, ManifestEntry, manifest_sha256, read_dataset_info, read_manifest
from trainflow.errors import UserFacingError

CACHE_FILE = "supervised.h5"


def _read_image(root: Path, relative: str) -> np.ndarray:
    with Image.open(root / relative) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _read_mask(root: Path, relative: str) -> np.ndarray:
    with Image.open(root / relative) as image:
        return np.asarray(image, dtype=np.uint8)


def _split_arrays(root: Path, entries: list[ManifestEntry], kind: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"labels": np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64)}
    if kind == "image":
        arrays["images"] = np.stack([_read_image(root, e.image) for e in entries]) if entries else np.zeros((0, 3, 1, 1), np.uint8)
        if entries and entries[0].mask:
            arrays["masks"] = np.stack([_read_mask(root, e.mask) for e in entries])
    else:
        arrays["features"] = np.array([e.features for e in entries], dtype=np.float32)
    if entries and entries[0].targets is not None:
        arrays["targets"] = np.array([e.targets for e in entries], dtype=np.float32)
    return arrays


def _train_statistics(train: dict[str, np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    if "images" in train:
        pixels = train["images"].astype(np.float64) / 255.0
        stats["input_mean"] = pixels.mean(axis=(0, 2, 3)).tolist()
        stats["input_std"] = (pixels.std(axis=(0, 2, 3)) + 1e-6).tolist()
    else:
        stats["input_mean"] = train["features"].astype(np.float64).mean(axis=0).tolist()
        stats["input_std"] = (train["features"].astype(np.float64).std(axis=0) + 1e-6).tolist()
    if "targets" in train:
        stats["target_mean"] = train["targets"].astype(np.float64).mean(axis=0).tolist()
        stats["target_std"] = (train["targets"].astype(np.float64).std(axis=0) + 1e-6).tolist()
    classes = len(info.get("class_names") or [])
    if "masks" in train:
        stats["class_counts"] = np.bincount(train["masks"].ravel(), minlength=classes).tolist()
    elif classes:
        stats["class_counts"] = np.bincount(train["labels"][train["labels"] >= 0], minlength=classes).tolist()
    return stats


def build_supervised_cache(dataset_dir: str | Path, staging: Path) -> dict[str, Any]:
    """Write staging/supervised.h5 from an ingest_split Dataset folder; returns counts and facts."""
    root = Path(dataset_dir)
    info = read_dataset_info(root)
    counts, split_arrays = {}, {}
    for split in SPLITS:
        entries = read_manifest(root, split)
        counts[f"num_{split}"] = len(entries)
        split_arrays[split] = (entries, _split_arrays(root, entries, info["kind"]))
    if counts["num_train"] == 0:
        raise UserFacingError("the train split is empty; ingest more records or change ingest.split")
    stats = _train_statistics(split_arrays["train"][1], info)
    dataset_sha256 = manifest_sha256(root)
    with h5py.File(staging / CACHE_FILE, "w") as handle:
        handle.attrs["info"] = json.dumps(info)
        handle.attrs["stats"] = json.dumps(stats)
        handle.attrs["dataset_sha256"] = dataset_sha256
        for split, (entries, arrays) in split_arrays.items():
            group = handle.create_group(split)
            group.create_dataset("record_ids", data=[e.record_id for e in entries], dtype=h5py.string_dtype())
            for name, array in arrays.items():
                chunks = (1, *array.shape[1:]) if array.ndim > 1 and len(array) else None
                group.create_dataset(name, data=array, chunks=chunks)
    return {**counts, "dataset_sha256": dataset_sha256, "kind": info["kind"]}


def read_supervised_attrs(cache_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(info, train statistics) of a supervised cache."""
    with h5py.File(cache_path(cache_dir), "r") as handle:
        if "info" not in handle.attrs:
            raise UserFacingError(f"{cache_path(cache_dir)} is not a supervised cache; the task and the cache do not match")
        return json.loads(handle.attrs["info"]), json.loads(handle.attrs["stats"])


class SupervisedCache(Dataset):
    """One split as dicts: index, inputs (float images in [0, 1] or features), label / targets / mask."""

    def __init__(self, cache_dir: str | Path, split: str) -> None:
        path = cache_path(cache_dir)
        with h5py.File(path, "r") as handle:
            if split not in handle:
                raise UserFacingError(f"{path} has no '{split}' split; rebuild the cache from an ingest output")
            group = handle[split]
            self.arrays = {name: torch.from_numpy(group[name][()]) for name in group if name != "record_ids"}
            self.record_ids = [r.decode() if isinstance(r, bytes) else r for r in group["record_ids"][()]]
        self.length = len(self.arrays["labels"])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"index": torch.tensor(index), "label": self.arrays["labels"][index]}
        if "images" in self.arrays:
            item["inputs"] = self.arrays["images"][index].float() / 255.0
        else:
            item["inputs"] = self.arrays["features"][index]
        if "targets" in self.arrays:
            item["targets"] = self.arrays["targets"][index]
        if "masks" in self.arrays:
            item["mask"] = self.arrays["masks"][index].long()
        return item
