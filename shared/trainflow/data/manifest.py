"""The Dataset artifact's layout, shared by the stages that read it.

    <dataset artifact>/
        manifest.jsonl   one JSON object per kept record: id, split, image, caption, label, sha256
        rejected.jsonl   one JSON object per unusable record: source, image, reason
        images/<split>/<n>.png   the record's image, resized and center-cropped

Later stages read the snapshot, never the original folder, so data that
arrives after ingest cannot change what a run trained and scored on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from trainflow.errors import UserFacingError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    record_id: str
    split: str
    image: str  # relative to the artifact folder
    caption: str
    label: int | None
    sha256: str


def read_manifest(dataset_dir: str | Path, split: str | None = None) -> list[ManifestEntry]:
    path = Path(dataset_dir) / "manifest.jsonl"
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the dataset input must be the output of the ingest_split stage")
    entries = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if split is None or row["split"] == split:
                entries.append(
                    ManifestEntry(row["id"], row["split"], row["image"], row["caption"], row.get("label"), row["sha256"])
                )
    return entries
