"""Assemble latents.h5 from the encoded shards (layout: trainflow.data.cache.latent_cache), atomically.

A split whose images all have one size keeps the flat layout (<split>/latent_moments (N, 2C, h, w)); a split
of several sizes (ingest.buckets) stores each size as a bucket, <split>/buckets/<b>/latent_moments, with
each record's bucket and row beside it. Per-record arrays (text, pooled, time ids, token ids) stay in
manifest order either way, so a record's index in its split means the same thing in every layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trainflow.atomic_files import atomic_file_path
from trainflow.data.manifest import ManifestEntry
from trainflow.diffusion.model_families import tokenize

LATENT_ARRAYS = ("latent_moments", "latent_moments_flipped", "loss_masks")  # stored per size (bucket)
RECORD_ARRAYS = ("text_embeddings", "pooled_text_embeddings", "time_ids")  # stored per record, in manifest order


def assemble_latent_cache(final: Path, folder: Path, shards: dict[str, list[str]], splits: dict[str, list[ManifestEntry]],
                          attrs: dict[str, Any], tokenizers: list, uncond_text: np.ndarray,
                          uncond_pooled: np.ndarray | None) -> None:
    """Write latents.h5 from the shards (atomically), then remove the shards."""
    layout = _shard_layout(folder / shards["train"][0])
    with atomic_file_path(final) as temporary, h5py.File(temporary, "w") as handle:
        handle.attrs.update(attrs)
        handle["uncond_embedding"] = uncond_text
        if uncond_pooled is not None:
            handle["uncond_pooled_embedding"] = uncond_pooled
        for number, tokenizer in enumerate(tokenizers):
            handle[f"uncond_input_ids{_suffix(number)}"] = tokenize(tokenizer, [""]).numpy().astype(np.int64)
        for split, entries in splits.items():
            group = handle.create_group(split)
            _write_record_facts(group, entries, tokenizers)
            shard_paths = [folder / name for name in shards[split]]
            _write_record_arrays(group, shard_paths, len(entries), layout, flipped=split == "train")
            _write_latents(group, shard_paths, len(entries), layout, flipped=split == "train")
    for names in shards.values():
        for name in names:
            (folder / name).unlink(missing_ok=True)


def _suffix(number: int) -> str:
    return "" if number == 0 else f"_{number + 1}"


def _shard_layout(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape (after the record axis) and dtype of every array a shard holds, from the first train shard."""
    layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with h5py.File(path, "r") as shard:
        for name in RECORD_ARRAYS:
            if name in shard:
                layout[name] = (shard[name].shape[1:], shard[name].dtype)
        first = next(iter(shard["sizes"].values()))
        for name in LATENT_ARRAYS:
            if name in first:
                layout[name] = (first[name].shape[1:], first[name].dtype)
    return layout


def _write_record_facts(group: h5py.Group, entries: list[ManifestEntry], tokenizers: list) -> None:
    strings = h5py.string_dtype()
    group.create_dataset("record_ids", data=[e.record_id for e in entries], dtype=strings)
    group.create_dataset("captions", data=[e.caption for e in entries], dtype=strings)
    group.create_dataset("labels", data=np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64))
    for number, tokenizer in enumerate(tokenizers):
        # zero-length arrays for an empty split, so readers see the same layout everywhere
        ids = (tokenize(tokenizer, [e.caption for e in entries]).numpy().astype(np.int64) if entries
               else np.zeros((0, tokenizer.model_max_length), dtype=np.int64))
        group.create_dataset(f"input_ids{_suffix(number)}", data=ids)
    if any(e.prior for e in entries):
        group.create_dataset("prior", data=np.array([e.prior for e in entries], dtype=np.uint8))


def _write_record_arrays(group: h5py.Group, shard_paths: list[Path], count: int, layout, flipped: bool) -> None:
    names = [name for name in RECORD_ARRAYS if name in layout]
    targets = {name: group.create_dataset(name, shape=(count, *layout[name][0]), dtype=layout[name][1],
                                          chunks=(1, *layout[name][0]) if count else None) for name in names}
    start = 0
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            size = shard["text_embeddings"].shape[0]
            for name, target in targets.items():
                target[start:start + size] = shard[name][()]
        start += size


def _sizes_in(shard_paths: list[Path]) -> list[str]:
    sizes: set[str] = set()
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            sizes.update(shard["sizes"].keys())
    return sorted(sizes, key=lambda s: tuple(int(v) for v in s.split("x")))


def _latent_names(layout, flipped: bool) -> list[str]:
    return [n for n in LATENT_ARRAYS if n in layout and (flipped or n != "latent_moments_flipped")]


def _write_latents(group: h5py.Group, shard_paths: list[Path], count: int, layout, flipped: bool) -> None:
    sizes = _sizes_in(shard_paths)
    names = _latent_names(layout, flipped)
    if len(sizes) <= 1:
        _write_flat_latents(group, shard_paths, count, layout, names)
    else:
        _write_bucketed_latents(group, shard_paths, count, layout, names, sizes)


def _write_flat_latents(group: h5py.Group, shard_paths: list[Path], count: int, layout, names: list[str]) -> None:
    shapes: dict[str, tuple[int, ...]] = {name: layout[name][0] for name in names}
    if shard_paths:  # the split's own latent size (it may differ from the train split's)
        with h5py.File(shard_paths[0], "r") as shard:
            first = next(iter(shard["sizes"].values()))
            shapes = {name: first[name].shape[1:] for name in names}
    targets = {name: group.create_dataset(name, shape=(count, *shapes[name]), dtype=layout[name][1],
                                          chunks=(1, *shapes[name]) if count else None) for name in names}
    start = 0
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            (size_group,) = shard["sizes"].values()
            size = len(size_group["positions"])
            for name, target in targets.items():
                target[start:start + size] = size_group[name][()]
            start += size


def _write_bucketed_latents(group: h5py.Group, shard_paths: list[Path], count: int, layout, names: list[str],
                            sizes: list[str]) -> None:
    """Each size a bucket: buckets/<b>/<array> with rows in record order; bucket_of and bucket_row per record."""
    counts = dict.fromkeys(sizes, 0)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            for size, size_group in shard["sizes"].items():
                counts[size] += len(size_group["positions"])
                shapes[size] = {name: size_group[name].shape[1:] for name in names}
    group.create_dataset("bucket_sizes", data=np.array([[int(v) for v in s.split("x")] for s in sizes], dtype=np.int64))
    targets = {size: {name: group.create_dataset(f"buckets/{b}/{name}", shape=(counts[size], *shapes[size][name]),
                                                 dtype=layout[name][1], chunks=(1, *shapes[size][name]))
                      for name in names} for b, size in enumerate(sizes)}
    bucket_of, bucket_row = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    filled, start = dict.fromkeys(sizes, 0), 0
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            for size, size_group in shard["sizes"].items():
                positions = size_group["positions"][()] + start
                rows = np.arange(filled[size], filled[size] + len(positions))
                bucket_of[positions], bucket_row[positions] = sizes.index(size), rows
                for name, target in targets[size].items():
                    target[rows[0]:rows[-1] + 1] = size_group[name][()]
                filled[size] += len(positions)
            start += shard["text_embeddings"].shape[0]
    group.create_dataset("bucket_of", data=bucket_of)
    group.create_dataset("bucket_row", data=bucket_row)
