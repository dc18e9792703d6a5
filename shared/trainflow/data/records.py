"""Read an image/caption dataset from disk and check every record.

Two layouts are understood:
- Hugging Face imagefolder: images anywhere under the root plus one or more
  `metadata.jsonl` files whose `file_name` is relative to that file's folder.
- Split folders: `<split>/images/*` with `<split>/captions.json`, either a
  mapping `{file name: caption}` or a list of `{"file_name", "text"}` objects.

A record that cannot be used (missing or undecodable image, empty caption,
path escaping the root) is returned as a `RejectedRecord` with its reason; it
never stops the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, UnidentifiedImageError

from trainflow.errors import UserFacingError

SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class CandidateRecord:
    source: str  # where the record was declared, for error messages
    image_ref: str  # the path as written in the metadata
    base_dir: Path  # folder the image path is relative to
    caption: Any
    label: Any = None
    layout_split: str | None = None  # split named by the folder layout, if any
    targets: Any = None  # regression values, one per configured target column
    mask_ref: Any = None  # segmentation mask path, relative like the image's


@dataclasses.dataclass(frozen=True)
class ValidRecord:
    record_id: str  # image path relative to the dataset root, posix style
    image_path: Path
    caption: str
    label: int | None
    sha256: str
    layout_split: str | None
    targets: tuple[float, ...] | None = None
    mask_path: Path | None = None


@dataclasses.dataclass(frozen=True)
class RejectedRecord:
    source: str
    image_ref: str
    reason: str


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, exc


def _imagefolder_candidates(
    root: Path, image_column: str, caption_column: str, label_column: str | None, rejected: list[RejectedRecord],
    target_columns: list[str] | None = None, mask_column: str | None = None,
) -> Iterator[CandidateRecord]:
    for metadata_file in sorted(root.rglob("metadata.jsonl")):
        folder = metadata_file.parent
        split = SPLIT_FOLDER_NAMES.get(folder.name) if folder != root else None
        for line_number, row in _read_jsonl(metadata_file):
            source = f"{metadata_file.relative_to(root)}:{line_number}"
            if isinstance(row, Exception) or not isinstance(row, dict):
                rejected.append(RejectedRecord(source, "", "line is not a JSON object"))
                continue
            if image_column not in row:
                rejected.append(RejectedRecord(source, "", f"no '{image_column}' key (set ingest.image_column)"))
                continue
            yield CandidateRecord(
                source=source,
                image_ref=str(row[image_column]),
                base_dir=folder,
                caption=row.get(caption_column),
                label=row.get(label_column) if label_column else None,
                layout_split=split,
                targets=[row.get(column) for column in target_columns] if target_columns else None,
                mask_ref=row.get(mask_column) if mask_column else None,
            )


def _split_folder_candidates(root: Path, rejected: list[RejectedRecord]) -> Iterator[CandidateRecord]:
    for captions_file in sorted(root.glob("*/captions.json")):
        split_dir = captions_file.parent
        source = str(captions_file.relative_to(root))
        try:
            payload = json.loads(captions_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejected.append(RejectedRecord(source, "", f"captions.json is not valid JSON ({exc})"))
            continue
        if isinstance(payload, dict):
            items = [{"file_name": name, "text": caption} for name, caption in payload.items()]
        elif isinstance(payload, list):
            items = payload
        else:
            rejected.append(RejectedRecord(source, "", "captions.json must be a mapping or a list"))
            continue
        for item in items:
            if not isinstance(item, dict) or "file_name" not in item:
                rejected.append(RejectedRecord(source, "", "entry has no 'file_name'"))
                continue
            yield CandidateRecord(
                source=source,
                image_ref=str(item["file_name"]),
                base_dir=split_dir / "images",
                caption=item.get("text", item.get("caption")),
                label=item.get("label"),
                layout_split=SPLIT_FOLDER_NAMES.get(split_dir.name),
            )


def _inside_root(candidate: CandidateRecord, reference: Any, root: Path, what: str) -> Path | str:
    """The resolved file, or the reason it cannot be used."""
    if not isinstance(reference, str) or not reference or "\x00" in reference:
        return f"{what} path {reference!r} is not a valid path"
    resolved = (candidate.base_dir / reference).resolve()
    if not resolved.is_relative_to(root):
        return f"{what} path escapes the dataset root {root}; keep every file inside it"
    if not resolved.is_file():
        return f"{what} file does not exist"
    return resolved


def _decode_reason(path: Path, what: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels; verify() alone misses truncated files
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{what} does not decode ({type(exc).__name__}: {exc})"
    return None


def _check(candidate: CandidateRecord, root: Path, require_caption: bool = True) -> ValidRecord | RejectedRecord:
    def reject(reason: str) -> RejectedRecord:
        return RejectedRecord(candidate.source, str(candidate.image_ref), reason)

    resolved = _inside_root(candidate, candidate.image_ref, root, "image")
    if isinstance(resolved, str):
        return reject(resolved)
    caption = candidate.caption
    if require_caption and (not isinstance(caption, str) or not caption.strip()):
        return reject("caption is missing or empty")
    label = candidate.label
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        return reject(f"label must be an integer class index, got {label!r}")
    targets = None
    if candidate.targets is not None:
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in candidate.targets):
            return reject(f"targets must be finite numbers, got {candidate.targets!r}")
        targets = tuple(float(v) for v in candidate.targets)
    mask_path = None
    if candidate.mask_ref is not None:
        mask_path = _inside_root(candidate, candidate.mask_ref, root, "mask")
        if isinstance(mask_path, str):
            return reject(mask_path)
        if reason := _decode_reason(mask_path, "mask"):
            return reject(reason)
    if reason := _decode_reason(resolved, "image"):
        return reject(reason)
    return ValidRecord(
        record_id=resolved.relative_to(root).as_posix(),
        image_path=resolved,
        caption=caption.strip() if isinstance(caption, str) else "",
        label=label,
        sha256=hashlib.sha256(resolved.read_bytes()).hexdigest(),
        layout_split=candidate.layout_split,
        targets=targets,
        mask_path=mask_path,
    )


def read_records(
    dataset_dir: str | Path,
    image_column: str = "file_name",
    caption_column: str = "text",
    label_column: str | None = "label",
    target_columns: list[str] | None = None,
    mask_column: str | None = None,
    require_caption: bool = True,
) -> tuple[list[ValidRecord], list[RejectedRecord]]:
    """Return (valid records sorted by id, rejected records with reasons).

    Raises UserFacingError when the folder is missing or holds no metadata at all.
    """
    root = Path(dataset_dir).expanduser().resolve()
    if not root.is_dir():
        raise UserFacingError(f"dataset folder {root} does not exist; set ingest.dataset_dir to your dataset root")
    rejected: list[RejectedRecord] = []
    candidates = list(_imagefolder_candidates(root, image_column, caption_column, label_column, rejected,
                                              target_columns, mask_column))
    candidates += list(_split_folder_candidates(root, rejected))
    if not candidates and not rejected:
        raise UserFacingError(
            f"no metadata.jsonl or <split>/captions.json found under {root}; "
            "write one (see README: 'Use your own data')"
        )
    valid: dict[str, ValidRecord] = {}
    for candidate in candidates:
        outcome = _check(candidate, root, require_caption)
        if isinstance(outcome, RejectedRecord):
            rejected.append(outcome)
        elif outcome.record_id in valid:
            rejected.append(RejectedRecord(candidate.source, candidate.image_ref, "image listed twice; kept the first"))
        else:
            valid[outcome.record_id] = outcome
    return sorted(valid.values(), key=lambda r: r.record_id), rejected
