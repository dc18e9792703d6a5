"""Image folders on disk as CandidateRecords: the two layouts users bring.

- Hugging Face imagefolder: images anywhere under the root plus one or more `metadata.jsonl` files whose
  image path (ingest.image_column) is relative to that file's folder; caption, label, target, mask, id and
  group columns as configured.
- Split folders: `<split>/images/*` with `<split>/captions.json`, either a mapping `{file name: caption}` or a
  list of `{"file_name", "text"}` objects (optionally "label").

Lines that are not JSON objects (or not UTF-8) become RejectedRecords here; everything else a line holds is
checked by trainflow.data.checks.record_validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from trainflow.config import IngestConfig
from trainflow.data.checks.quarantine import RejectedRecord
from trainflow.data.checks.record_validation import CandidateRecord
from trainflow.data.sources.candidates import SourceCandidates
from trainflow.errors import UserFacingError

SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def reference_text(value: Any) -> str:
    """How a record's path is named in reports, whatever its type."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or the Exception that stopped it) for every non-blank line."""
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8-sig"))  # -sig: a byte order mark is not part of the record
        except Exception as exc:  # not UTF-8, not JSON, nested too deep, a number too long: one bad line
            yield number, exc


def _line_problem(row: Any, image_column: str) -> str | None:
    if isinstance(row, Exception):
        return f"line is not valid JSON ({type(row).__name__}: {str(row)[:200]})"
    if not isinstance(row, dict):
        return f"line is a JSON {type(row).__name__}, not an object"
    if image_column not in row:
        return f"no '{image_column}' key (set ingest.image_column)"
    return None


def _imagefolder_candidates(root: Path, cfg: IngestConfig, rejected: list[RejectedRecord]) -> Iterator[CandidateRecord]:
    for metadata_file in sorted(root.rglob("metadata.jsonl")):
        folder = metadata_file.parent
        split = SPLIT_FOLDER_NAMES.get(folder.name) if folder != root else None
        for line_number, row in read_json_lines(metadata_file):
            source = f"{metadata_file.relative_to(root)}:{line_number}"
            if problem := _line_problem(row, cfg.image_column):
                rejected.append(RejectedRecord(source, source, problem, "metadata_line"))
                continue
            yield CandidateRecord(
                source=source, ref=reference_text(row[cfg.image_column]), base_dir=folder,
                record_id=row.get(cfg.id_column) if cfg.id_column else None,
                image=row[cfg.image_column], mask=row.get(cfg.mask_column) if cfg.mask_column else None,
                caption=row.get(cfg.caption_column), label=row.get(cfg.label_column) if cfg.label_column else None,
                targets=[row.get(c) for c in cfg.target_columns] if cfg.target_columns else None,
                group=row.get(cfg.group_column) if cfg.group_column else None, layout_split=split,
            )


def _captions_items(captions_file: Path, source: str, rejected: list[RejectedRecord]) -> list[Any]:
    try:
        payload = json.loads(captions_file.read_bytes().decode("utf-8-sig"))
    except Exception as exc:  # not UTF-8 or not JSON: the whole file is one unusable declaration
        rejected.append(RejectedRecord(source, source, f"captions.json is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})",
                                       "metadata_line"))
        return []
    if isinstance(payload, dict):
        return [{"file_name": name, "text": caption} for name, caption in payload.items()]
    if isinstance(payload, list):
        return payload
    rejected.append(RejectedRecord(source, source, "captions.json must be a mapping or a list", "metadata_line"))
    return []


def _split_folder_candidates(root: Path, rejected: list[RejectedRecord]) -> Iterator[CandidateRecord]:
    for captions_file in sorted(root.glob("*/captions.json")):
        split_dir = captions_file.parent
        source = str(captions_file.relative_to(root))
        for index, item in enumerate(_captions_items(captions_file, source, rejected)):
            if not isinstance(item, dict) or "file_name" not in item:
                rejected.append(RejectedRecord(f"{source}[{index}]", f"{source}[{index}]", "entry has no 'file_name'", "metadata_line"))
                continue
            yield CandidateRecord(
                source=source, ref=reference_text(item["file_name"]), base_dir=split_dir / "images",
                image=item["file_name"], caption=item.get("text", item.get("caption")), label=item.get("label"),
                layout_split=SPLIT_FOLDER_NAMES.get(split_dir.name),
            )


def folder_candidates(cfg: IngestConfig) -> SourceCandidates:
    """The image folder's records, rooted at the resolved dataset root, with the lines rejected before any check.

    Raises UserFacingError when the folder is missing or holds no metadata at all.
    """
    root = Path(cfg.dataset_dir or "").expanduser().resolve()
    if not root.is_dir():
        raise UserFacingError(f"dataset folder {root} does not exist; set ingest.dataset_dir to your dataset root")
    rejected: list[RejectedRecord] = []
    candidates = list(_imagefolder_candidates(root, cfg, rejected))
    candidates += list(_split_folder_candidates(root, rejected))
    if not candidates and not rejected:
        raise UserFacingError(
            f"no metadata.jsonl or <split>/captions.json found under {root}; "
            "write one (see README: 'Use your own data')"
        )
    return SourceCandidates(candidates, "image", root, rejected, target_names=cfg.target_columns)
