"""A Dataset folder with the same records as an ingest output, assigned to splits anew (folds, refits).

The new folder holds a manifest whose lines say each record's new split (a record may be in two, e.g. a
train+val refit keeps val for the engine's validation), a copy of dataset.json, and links to the ingest
output's images/ and masks/, so nothing is decoded or copied again. build_cache reads it like any ingest output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainflow.atomic_files import atomic_directory
from trainflow.data.manifest import DATASET_INFO
from trainflow.errors import UserFacingError

LINKED_FOLDERS = ("images", "masks")


def write_resplit_dataset(source_dir: str | Path, output_dir: str | Path, splits_of: dict[str, list[str]]) -> dict[str, int]:
    """Write `output_dir` with each record of `splits_of` (id -> splits) in those splits; returns counts per split.

    Raises UserFacingError when `splits_of` names a record the source does not hold.
    """
    source = Path(source_dir).resolve()
    lines = [json.loads(line) for line in (source / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    by_id = {row["id"]: row for row in lines}
    missing = sorted(set(splits_of) - set(by_id))
    if missing:
        raise UserFacingError(f"record {missing[0]!r} of the fold plan is not in {source}; the folds and the "
                              "dataset come from different ingest runs: run ingest again")
    counts: dict[str, int] = {}
    out_lines = []
    for record_id in sorted(splits_of):
        for split in splits_of[record_id]:
            out_lines.append(json.dumps({**by_id[record_id], "split": split}))
            counts[split] = counts.get(split, 0) + 1
    with atomic_directory(output_dir) as staging:
        (staging / "manifest.jsonl").write_text("\n".join(out_lines) + "\n", encoding="utf-8")
        (staging / DATASET_INFO).write_bytes((source / DATASET_INFO).read_bytes())
        for name in LINKED_FOLDERS:
            if (source / name).is_dir():
                os.symlink(source / name, staging / name, target_is_directory=True)
    return counts


def write_train_val_refit_dataset(source_dir: str | Path, output_dir: str | Path) -> dict[str, int]:
    """The ingest output with every val record also in train (tune.refit: train_val); test stays test."""
    from trainflow.data.manifest import read_manifest

    moves = {"train": ["train"], "val": ["train", "val"], "test": ["test"]}
    return write_resplit_dataset(source_dir, output_dir, {e.record_id: moves[e.split] for e in read_manifest(source_dir)})
