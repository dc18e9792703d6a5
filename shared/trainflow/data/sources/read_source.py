"""Every input format behind one function: `read_source(ingest_config, needs)` -> checked records + facts.

Sources: an image folder (imagefolder + metadata.jsonl, or per-split folders with captions.json), a table
(CSV / JSONL / Parquet: image paths or feature rows), an HDF5 file (image or feature datasets), and
scikit-learn's bundled datasets. Each source turns its rows into one SourceCandidates (candidates.py); every candidate then goes
through the same checks (trainflow.data.checks.record_validation), duplicates by id and by content are removed, and
class names are settled. A record that cannot be used is returned as a RejectedRecord with its reason; nothing
a record holds may stop ingest.
"""

from __future__ import annotations

import dataclasses

from tqdm import tqdm

from trainflow.config import IngestConfig
from trainflow.data.checks.caption_tokens import CaptionTokenCounter, long_caption_warning, whitespace_counter
from trainflow.data.sources.hdf5 import hdf5_candidates
from trainflow.data.checks.image_decoding import ImageLimits
from trainflow.data.checks.quarantine import DataWarning, RejectedRecord
from trainflow.data.checks.record_validation import IngestRecord, RecordRules, validate_record
from trainflow.data.sources.candidates import SourceCandidates
from trainflow.data.sources.image_folder import folder_candidates
from trainflow.data.sources.sklearn_bundled import sklearn_candidates
from trainflow.data.sources.table import table_candidates
from trainflow.errors import UserFacingError
from trainflow.tasks.definition import RecordNeeds

__all__ = ["IngestRecord", "SourceData", "read_source", "image_limits"]


@dataclasses.dataclass
class SourceData:
    records: list[IngestRecord]  # kept, sorted by id
    rejected: list[RejectedRecord]
    kind: str  # "image" or "table"
    class_names: list[str] | None = None
    target_names: list[str] | None = None
    feature_names: list[str] | None = None
    warnings: list[DataWarning] = dataclasses.field(default_factory=list)


def image_limits(cfg: IngestConfig) -> ImageLimits:
    return ImageLimits(max_pixels=cfg.max_image_pixels, min_size=cfg.min_image_size)


def _candidates(cfg: IngestConfig, needs: RecordNeeds) -> SourceCandidates:
    if cfg.sklearn_dataset:
        return sklearn_candidates(cfg.sklearn_dataset, with_masks="mask" in needs.required)
    if cfg.table:
        return table_candidates(cfg)
    if cfg.hdf5:
        return hdf5_candidates(cfg)
    return folder_candidates(cfg)


def _rules(cfg: IngestConfig, needs: RecordNeeds, found: SourceCandidates) -> RecordRules:
    names = list(cfg.class_names) if cfg.class_names is not None else found.class_names
    return RecordRules(
        required=needs.required, kind=found.kind, limits=image_limits(cfg), root=found.root,
        class_names=tuple(names) if names is not None and needs.classes_of != "masks" else None,
        mask_classes=len(names) if names is not None and needs.classes_of == "masks" else None,
        labels_are_names=found.labels_are_names, label_column=cfg.label_column,
        target_columns=tuple(found.target_names or ()), group_column=cfg.group_column,
        feature_columns=tuple(found.feature_names or ()), caption_column=cfg.text_column or cfg.caption_column, id_column=cfg.id_column,
    )


def drop_duplicates(records: list[IngestRecord], sources: dict[int, str]) -> tuple[list[IngestRecord], list[RejectedRecord]]:
    """Records unique by id (first declared wins) and by content (first by id wins), sorted by id.

    The same bytes under two names count once, so they cannot land in two splits. `sources` maps
    id(record) -> where it was declared, for the rejection.
    """
    by_id: dict[str, IngestRecord] = {}
    rejected = []
    for record in records:
        if record.record_id in by_id:
            rejected.append(RejectedRecord(sources[id(record)], record.record_id, f"record id {record.record_id!r} is "
                                           f"listed twice (also at {sources[id(by_id[record.record_id])]}); kept the first",
                                           "duplicate_id"))
        else:
            by_id[record.record_id] = record
    by_content: dict[str, IngestRecord] = {}
    for record in sorted(by_id.values(), key=lambda r: r.record_id):
        kept = by_content.setdefault(record.sha256, record)
        if kept is not record:
            rejected.append(RejectedRecord(sources[id(record)], record.record_id, f"same content as {kept.record_id!r} "
                                           f"(sha256 {record.sha256[:12]}); kept that one", "duplicate_content"))
    return sorted(by_content.values(), key=lambda r: r.record_id), rejected


def _settled_class_names(cfg: IngestConfig, needs: RecordNeeds, found: SourceCandidates,
                         records: list[IngestRecord]) -> list[str] | None:
    """Declared names, else the source's, else 0..K-1 from the largest label (or mask class id)."""
    if cfg.class_names is not None:
        return list(cfg.class_names)
    if found.class_names is not None:
        return found.class_names
    if needs.classes_of == "masks":
        largest = max((r.mask_max_class for r in records if r.mask_max_class is not None), default=None)
    else:
        largest = max((r.label for r in records if r.label is not None), default=None)
    return [str(i) for i in range(largest + 1)] if largest is not None else None


def read_source(cfg: IngestConfig, needs: RecordNeeds, caption_counter: CaptionTokenCounter | None = None) -> SourceData:
    """Read and check every record of the configured source.

    Inputs: the ingest section, what the task needs of a record (its required fields, what its class names
    describe), and how to count caption tokens (default: the whitespace estimate against ingest.max_caption_tokens).
    Output: kept records sorted by id, rejected records with reasons, the class/target/feature names, warnings.
    Raises UserFacingError only for the source as a whole (missing folder/file/column), never for a record.
    """
    found = _candidates(cfg, needs)
    if needs.images and found.kind != "image":
        raise UserFacingError(f"ingest: {cfg.source_description} holds feature rows, not images, and the task reads "
                              f"images only; point ingest at images (a folder, or a table with the column named by "
                              f"ingest.image_column, now {cfg.image_column!r})")
    rules = _rules(cfg, needs, found)
    checked, rejected, sources = [], list(found.rejected), {}
    for candidate in tqdm(found.candidates, desc="ingest: checking records", unit="rec", mininterval=2.0, disable=None):
        outcome = validate_record(candidate, rules)
        if isinstance(outcome, RejectedRecord):
            rejected.append(outcome)
        else:
            checked.append(outcome)
            sources[id(outcome)] = candidate.source
    records, duplicates = drop_duplicates(checked, sources)
    data = SourceData(records, rejected + duplicates, found.kind, _settled_class_names(cfg, needs, found, records),
                      found.target_names, found.feature_names, list(found.warnings))
    if needs.counts_caption_tokens:
        counter = caption_counter or whitespace_counter(cfg.max_caption_tokens)
        if warning := long_caption_warning({r.record_id: r.caption for r in records if r.caption}, counter):
            data.warnings.append(warning)
    return data
