"""The Dataset artifact's layout, shared by the stages that read it.

    <dataset artifact>/
        manifest.jsonl   one JSON object per kept record, sorted by id: id, split, sha256, and as present:
                         image, mask (relative PNG paths), caption, label, targets, features, group;
                         images that were resized or cropped: original_size [h, w] and crop_top_left [top, left]
                         (the crop box's corner in the resized image; the box is the snapshot's size);
                         text_to_image class images (ingest.prior_preservation): prior true, train split only;
                         train records whose label the task hid (its hidden_train_labels): unlabelled true, no label
        dataset.json     task, kind (image | table), class_names, target_names, feature_names, resolution,
                         split (the ingest.split settings used)
        rejected.jsonl   one JSON object per rejected record: ref, source, reason, rule (trainflow.data.checks.quarantine)
        folds.json       k-fold kinds only: the test ids and each fold's train/val ids (trainflow.data.kfold_split)
        images/<split>/<n>.png   the record's image, resized and center-cropped (to ingest.resolution, or to
                                 its aspect-ratio bucket with ingest.buckets)
        masks/<split>/<n>.png    segmentation class ids, resized with nearest neighbour; text_to_image: the loss
                                 weight of each pixel (0..255 = 0..1), resized like its image

Later stages read the snapshot, never the original folder, so data that
arrives after ingest cannot change what a run trained and scored on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from trainflow.errors import UserFacingError

SPLITS = ("train", "val", "test")
DATASET_INFO = "dataset.json"  # task, kind (image/table), class/target/feature names, resolution
REJECTED_FILE = "rejected.jsonl"
FOLDS_FILE = "folds.json"


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    record_id: str
    split: str
    image: str | None  # relative to the artifact folder
    caption: str | None
    label: int | None
    sha256: str
    targets: list[float] | None = None
    features: list[float] | None = None
    mask: str | None = None
    group: str | None = None
    original_size: tuple[int, int] | None = None  # (h, w) before resizing; None: the snapshot is the original
    crop_top_left: tuple[int, int] | None = None  # (top, left) of the crop in the resized image; None: (0, 0)
    prior: bool = False  # a class image for prior preservation (text_to_image)


def manifest_sha256(dataset_dir: str | Path) -> str:
    """Hash of the manifest: every kept record's content hash and its split. Checkpoints are tied to it."""
    path = Path(dataset_dir) / "manifest.jsonl"
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the dataset input must be the output of the ingest_split stage")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(dataset_dir: str | Path, split: str | None = None) -> list[ManifestEntry]:
    path = Path(dataset_dir) / "manifest.jsonl"
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the dataset input must be the output of the ingest_split stage")
    entries = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if split is None or row["split"] == split:
                entries.append(ManifestEntry(
                    row["id"], row["split"], row.get("image"), row.get("caption"), row.get("label"), row["sha256"],
                    row.get("targets"), row.get("features"), row.get("mask"), row.get("group"),
                    _pair(row.get("original_size")), _pair(row.get("crop_top_left")), bool(row.get("prior", False))))
    return entries


def _pair(value) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def read_dataset_info(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / DATASET_INFO
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the dataset input must be the output of the ingest_split stage")
    return json.loads(path.read_text(encoding="utf-8"))


def read_folds(dataset_dir: str | Path) -> dict:
    """The k-fold plan (see trainflow.data.kfold_split); UserFacingError when the dataset was not split into folds."""
    path = Path(dataset_dir) / FOLDS_FILE
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; ingest writes it only with ingest.split.kind: kfold or stratified_kfold")
    return json.loads(path.read_text(encoding="utf-8"))
