"""Every input format behind one function: `read_source(ingest_config, task)` -> records + facts.

Sources today: an image folder (imagefolder + metadata.jsonl, or per-split
folders with captions.json), a CSV table, and scikit-learn's bundled datasets
(digits as 8x8 images, iris / wine / breast_cancer / diabetes as tables). A
record that cannot be used is returned as a RejectedRecord with its reason;
nothing a record holds may stop ingest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from trainflow.config import IngestConfig
from trainflow.data.records import RejectedRecord, read_records
from trainflow.errors import UserFacingError


@dataclasses.dataclass(frozen=True)
class IngestRecord:
    record_id: str
    sha256: str  # of the record's content (image bytes, or the feature/target values)
    layout_split: str | None = None
    caption: str | None = None
    label: int | None = None
    targets: tuple[float, ...] | None = None
    features: tuple[float, ...] | None = None
    image_path: Path | None = None
    image_array: np.ndarray | None = dataclasses.field(default=None, compare=False)  # uint8 HxW or HxWx3
    mask_path: Path | None = None
    mask_array: np.ndarray | None = dataclasses.field(default=None, compare=False)  # class ids, HxW


@dataclasses.dataclass
class SourceData:
    records: list[IngestRecord]
    rejected: list[RejectedRecord]
    kind: str  # "image" or "table"
    class_names: list[str] | None = None
    target_names: list[str] | None = None
    feature_names: list[str] | None = None


def read_source(cfg: IngestConfig, task: str) -> SourceData:
    if cfg.sklearn_dataset:
        data = _sklearn_source(cfg.sklearn_dataset, task)
    elif cfg.table:
        data = _table_source(cfg, task)
    else:
        data = _folder_source(cfg, task)
    if cfg.class_names is not None:
        data.class_names = list(cfg.class_names)
    if task in ("classification", "segmentation") or (task == "text_to_image" and cfg.label_column):
        _check_labels(data, task)
    return data


def _content_hash(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _folder_source(cfg: IngestConfig, task: str) -> SourceData:
    assert cfg.dataset_dir is not None
    valid, rejected = read_records(cfg.dataset_dir, cfg.image_column, cfg.caption_column, cfg.label_column,
                                   cfg.target_columns, cfg.mask_column, require_caption=task == "text_to_image")
    records = [IngestRecord(record_id=r.record_id, sha256=r.sha256, layout_split=r.layout_split, caption=r.caption or None,
                            label=r.label, targets=r.targets, image_path=r.image_path, mask_path=r.mask_path)
               for r in valid]
    if task == "classification":
        kept = [r for r in records if r.label is not None]
        rejected += [RejectedRecord("metadata", r.record_id, f"no '{cfg.label_column}' value") for r in records if r.label is None]
        records = kept
    return SourceData(records, rejected, "image", target_names=cfg.target_columns)


def _sklearn_source(name: str, task: str) -> SourceData:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        images = (bunch.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
        records = []
        for index, (image, label) in enumerate(zip(images, bunch.target)):
            mask = None
            if task == "segmentation":
                # The digit's strokes carry the digit's class (1..10); background is 0.
                mask = np.where(image >= 128, int(label) + 1, 0).astype(np.uint8)
            records.append(IngestRecord(record_id=f"digits/{index:05d}", sha256=hashlib.sha256(image.tobytes()).hexdigest(),
                                        label=int(label), image_array=image, mask_array=mask,
                                        caption=f"a handwritten digit {int(label)}"))
        class_names = [str(d) for d in range(10)]
        if task == "segmentation":
            class_names = ["background"] + [f"digit {d}" for d in range(10)]
        return SourceData(records, [], "image", class_names=class_names)
    features = np.asarray(bunch.data, dtype=np.float64)
    feature_names = [str(n) for n in bunch.feature_names]
    records = []
    if name == "diabetes":
        for index, (row, target) in enumerate(zip(features, bunch.target)):
            records.append(IngestRecord(f"{name}/{index:05d}", _content_hash(row.tolist(), float(target)),
                                        targets=(float(target),), features=tuple(row.tolist())))
        return SourceData(records, [], "table", target_names=["disease_progression"], feature_names=feature_names)
    for index, (row, label) in enumerate(zip(features, bunch.target)):
        records.append(IngestRecord(f"{name}/{index:05d}", _content_hash(row.tolist(), int(label)),
                                    label=int(label), features=tuple(row.tolist())))
    return SourceData(records, [], "table", class_names=[str(n) for n in bunch.target_names], feature_names=feature_names)


def _table_source(cfg: IngestConfig, task: str) -> SourceData:
    import pandas as pd

    path = Path(cfg.table or "").expanduser()
    if not path.is_file():
        raise UserFacingError(f"table {path} does not exist; set ingest.table to a CSV file")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise UserFacingError(f"table {path} is not a readable CSV file ({type(exc).__name__}: {exc})") from None
    targets = list(cfg.target_columns or [])
    used = set(targets) | {cfg.label_column} - {None}
    missing = [c for c in [*used, *(cfg.feature_columns or [])] if c not in frame.columns]
    if missing:
        raise UserFacingError(f"table {path} has no column {', '.join(map(repr, missing))}; its columns are "
                              f"{', '.join(map(str, frame.columns[:20]))}")
    features = list(cfg.feature_columns or [c for c in frame.columns if c not in used and pd.api.types.is_numeric_dtype(frame[c])])
    if not features:
        raise UserFacingError(f"table {path}: no numeric feature columns; set ingest.feature_columns")
    class_names: list[str] | None = None
    label_index: dict[Any, int] = {}
    if cfg.label_column:
        values = frame[cfg.label_column].dropna()
        class_names = cfg.class_names or sorted({str(v) for v in values})
        label_index = {name: i for i, name in enumerate(class_names)}
    records, rejected = [], []
    for row_number, row in frame.iterrows():
        source = f"{path.name}:{int(row_number) + 2}"  # header is line 1
        outcome = _table_record(row, features, targets, cfg.label_column, label_index, source)
        (rejected if isinstance(outcome, RejectedRecord) else records).append(outcome)
    return SourceData(records, rejected, "table", class_names=class_names, target_names=targets or None, feature_names=features)


def _table_record(row, features, targets, label_column, label_index, source) -> IngestRecord | RejectedRecord:
    def numbers(columns: list[str], what: str) -> tuple[float, ...] | str:
        try:
            values = tuple(float(row[c]) for c in columns)
        except (TypeError, ValueError):
            return f"{what} must be numbers"
        if not all(math.isfinite(v) for v in values):
            return f"{what} must be finite (found NaN or infinity)"
        return values

    feature_values = numbers(features, "features")
    if isinstance(feature_values, str):
        return RejectedRecord(source, source, feature_values)
    target_values = numbers(targets, "targets") if targets else None
    if isinstance(target_values, str):
        return RejectedRecord(source, source, target_values)
    label = None
    if label_column:
        raw = row[label_column]
        if str(raw) not in label_index:
            return RejectedRecord(source, source, f"label {raw!r} is not one of the declared classes")
        label = label_index[str(raw)]
    return IngestRecord(source, _content_hash(feature_values, target_values, label), label=label,
                        targets=target_values, features=feature_values)


def _check_labels(data: SourceData, task: str) -> None:
    """Labels outside the declared classes are rejected; class names default to 0..K-1."""
    labels = [r.label for r in data.records if r.label is not None]
    if task == "segmentation" or not labels:
        return
    if data.class_names is None:
        data.class_names = [str(i) for i in range(max(labels) + 1)]
    known = len(data.class_names)
    kept = []
    for record in data.records:
        if record.label is not None and not 0 <= record.label < known:
            data.rejected.append(RejectedRecord("labels", record.record_id,
                                                f"label {record.label} is outside the {known} declared classes"))
        else:
            kept.append(record)
    data.records = kept
