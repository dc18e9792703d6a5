"""Per-record checks: a CandidateRecord (raw values from any source) becomes an IngestRecord or a RejectedRecord.

Every field is checked for what a later stage needs (caption text, class index, finite numbers, a path inside
the root, an image that decodes fully within the pixel budget, a mask of the image's size with known class ids).
`validate_record` turns any exception a record's content provokes into a rejection with the exception's type
and message, so no record can raise out of ingest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import unicodedata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from trainflow.data.checks.image_decoding import (
    ImageLimits, alpha_channel, check_mask, decode_alpha_file, decode_image_file, decode_mask_file, image_array_to_rgb,
    mask_class_ids,
)
from trainflow.data.checks.quarantine import RecordRejected, RejectedRecord
from trainflow.data.checks.record_paths import resolve_inside_root


MAX_UNDECLARED_CLASSES = 100_000  # without ingest.class_names, names 0..largest label are made for every class


class ArrayRow(Protocol):
    """A lazily read row of a stored array (e.g. one image of an HDF5 dataset)."""

    def read(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class CandidateRecord:
    """One record as a source declared it: raw values of any type, nothing checked yet."""

    source: str  # where it was declared, e.g. "metadata.jsonl:12"
    ref: str  # how to name it in reports
    default_id: str | None = None  # id when neither id_column nor an image path gives one
    base_dir: Path | None = None  # folder that image/mask paths are relative to
    record_id: Any = None  # value of id_column, if configured
    image: Any = None  # image path as written
    image_array: np.ndarray | ArrayRow | None = None
    mask: Any = None  # mask path as written
    mask_array: np.ndarray | ArrayRow | None = None
    caption: Any = None
    label: Any = None
    targets: list[Any] | None = None  # one raw value per target column
    features: Any = None  # raw values, one per feature
    group: Any = None
    layout_split: str | None = None  # split named by the folder layout, if any


@dataclasses.dataclass(frozen=True)
class IngestRecord:
    record_id: str
    sha256: str  # of the record's content (image file bytes or array bytes, or the feature/target/label values)
    layout_split: str | None = None
    caption: str | None = None
    label: int | None = None
    targets: tuple[float, ...] | None = None
    features: tuple[float, ...] | None = None
    image_path: Path | None = None
    image_array: Any = dataclasses.field(default=None, compare=False)  # uint8 HxW[xC] array or an ArrayRow
    mask_path: Path | None = None
    mask_array: Any = dataclasses.field(default=None, compare=False)  # class ids HxW, array or ArrayRow
    group: str | None = None
    mask_max_class: int | None = dataclasses.field(default=None, compare=False)  # largest class id in the mask


@dataclasses.dataclass(frozen=True)
class RecordRules:
    """What a record must satisfy, from the task's needs (trainflow.tasks: RecordNeeds) and the ingest config."""

    required: frozenset[str]  # fields a record is rejected without: caption, label, targets, mask
    kind: str  # "image" (every record has an image), "table" (feature rows) or "text"
    limits: ImageLimits
    root: Path | None = None  # dataset root that every path must stay inside
    class_names: tuple[str, ...] | None = None  # of labels: declared (or, for tables, read from the label column)
    mask_classes: int | None = None  # number of declared segmentation classes (mask ids 0..K-1)
    labels_are_names: bool = False  # tables hold class names; folders and arrays hold class indices
    label_column: str | None = None
    target_columns: tuple[str, ...] = ()
    group_column: str | None = None
    feature_columns: tuple[str, ...] = ()  # one name per feature value, so a reason names the column
    caption_column: str | None = None
    id_column: str | None = None


def content_hash(*parts: Any) -> str:
    """sha256 of values (features, targets, label) for records that have no file."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _read(value: Any) -> Any:
    return value.read() if hasattr(value, "read") else value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 80 else text[:77] + "...") + f" ({type(value).__name__})"


def _integer(value: Any) -> int | None:
    """An integer from int, numpy integer or integral float; None otherwise (bools are not integers)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _is_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (JSON allows "\\ud800"; no encoder or tokenizer does)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hidden_character(text: str) -> str | None:
    """The first character of `text` that no one can see or type in a name, spelled U+XXXX, or None.

    Control characters (NUL, BEL, ESC, an embedded line break...), line/paragraph separators, a byte order
    mark and U+FFFD (an undecodable byte) would make a class name, id or group that looks like another.
    """
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in "\ufeff\ufffd":
            return f"U+{ord(char):04X}"
    return None


def _column(name: str | None, field: str) -> str:
    """How a reason names the column a value came from: "label column 'species'", or the field alone."""
    return f"{field} column {name!r}" if name else field


def _text_key(value: Any, rule: str, what: str) -> str:
    """An id or group value as a string (`what` names its column)."""
    number = _integer(value)
    if number is not None and not isinstance(value, (float, np.floating)):
        return str(number)
    if isinstance(value, str) and value.strip() and _is_unicode(value):
        if hidden := hidden_character(value.strip(" ")):
            raise RecordRejected(rule, f"{what} value {_shown(value)} holds a control character or line break ({hidden})")
        return value.strip()
    raise RecordRejected(rule, f"{what} value {_shown(value)} must be a non-empty string or an integer")


def _caption(value: Any, rules: RecordRules) -> str | None:
    if "caption" not in rules.required:
        return value.strip() if isinstance(value, str) and value.strip() else None
    what = "text" if rules.kind == "text" else "caption"  # a text table's text travels as the caption
    column = _column(rules.caption_column, what)
    if _is_missing(value):
        raise RecordRejected(f"{what}_missing", f"{column} is missing")
    if not isinstance(value, str):
        raise RecordRejected(f"{what}_not_text", f"{column} value {_shown(value)} is not text")
    if not _is_unicode(value) or "\ufffd" in value:
        raise RecordRejected(f"{what}_not_text", f"{column} holds characters that are not valid text (undecodable bytes)")
    if not value.strip():
        raise RecordRejected(f"{what}_empty", f"{column} is empty")
    return value.strip()


def _label(value: Any, rules: RecordRules) -> int | None:
    if _is_missing(value):
        if "label" in rules.required:
            raise RecordRejected("label_missing", f"{_column(rules.label_column, 'label')} has no value")
        return None
    names = rules.class_names
    number = _integer(value)
    column = _column(rules.label_column, "label")
    if isinstance(value, str) and (hidden := hidden_character(value.strip(" "))):
        # A corrupted cell must not become a class of its own (or silently match one after cleaning).
        raise RecordRejected("label_control_character", f"{column} value {_shown(value)} holds a control character or "
                                                        f"line break ({hidden}); fix the cell")
    if rules.labels_are_names:
        name = str(number) if number is not None else value.strip() if isinstance(value, str) else None
        if name is None:
            raise RecordRejected("label_not_integer", f"{column} value {_shown(value)} is not a class name or integer")
        if names is None or name not in names:
            raise RecordRejected("label_unknown_class", f"{column} value {name[:80]!r} is not one of the declared "
                                                        "classes (ingest.class_names)")
        return names.index(name)
    if number is None and isinstance(value, str) and names is not None and value in names:
        return names.index(value)
    if number is None:
        raise RecordRejected("label_not_integer", f"{column} value {_shown(value)} is not an integer class index")
    if number < 0 or (names is not None and number >= len(names)):
        declared = f"the {len(names)} declared classes 0..{len(names) - 1}" if names is not None else "0 or more"
        raise RecordRejected("label_unknown_class", f"{column} value {str(number)[:20]} is outside {declared}")
    if names is None and number >= MAX_UNDECLARED_CLASSES:  # class names default to 0..largest label
        raise RecordRejected("label_unknown_class", f"{column} value {str(number)[:20]} is not below "
                                                    f"{MAX_UNDECLARED_CLASSES}; list the classes in ingest.class_names")
    return number


def _finite_numbers(values: Any, names: tuple[str, ...], what: str) -> tuple[float, ...]:
    """`values` as floats; a reason names the column (`names`, one per value) that holds the bad one."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise RecordRejected(f"{what}_not_number", f"{what} values {_shown(values)} are not a row of numbers")
    row = list(values.tolist() if isinstance(values, np.ndarray) else values)
    if names and len(row) != len(names):
        raise RecordRejected(f"{what}_missing", f"{len(row)} {what} values for the {len(names)} {what} columns "
                                                f"{', '.join(map(repr, names[:10]))}")
    for index, value in enumerate(row):
        name = _column(names[index], what) if names else f"{what} #{index}"
        if value is None:
            raise RecordRejected(f"{what}_missing", f"{name} is missing")
        if isinstance(value, (bool, np.bool_, np.complexfloating)) or not isinstance(value, (int, float, np.number)):
            raise RecordRejected(f"{what}_not_number", f"{name} is {_shown(value)}, not a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise RecordRejected(f"{what}_not_finite", f"{name} is {_shown(value)}; it must be finite")
        row[index] = number
    return tuple(row)


def _image(candidate: CandidateRecord, rules: RecordRules) -> tuple[Image.Image, str, Path | None]:
    """(RGB image, content sha256, resolved path or None)."""
    if candidate.image_array is not None:
        array = _read(candidate.image_array)
        return image_array_to_rgb(array, rules.limits), hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), None
    assert rules.root is not None and candidate.base_dir is not None
    path = resolve_inside_root(candidate.image, candidate.base_dir, rules.root, "image")
    return decode_image_file(path, rules.limits), hashlib.sha256(path.read_bytes()).hexdigest(), path


def _mask(candidate: CandidateRecord, rules: RecordRules, image_size: tuple[int, int]) -> tuple[Path | None, int | None]:
    """(resolved mask path or None, the largest class id), after checking it against its image."""
    if candidate.mask_array is not None:
        ids, path = mask_class_ids(_read(candidate.mask_array)), None
    elif not _is_missing(candidate.mask):
        assert rules.root is not None and candidate.base_dir is not None
        path = resolve_inside_root(candidate.mask, candidate.base_dir, rules.root, "mask")
        ids = decode_mask_file(path, rules.limits)
    elif "mask" in rules.required:
        raise RecordRejected("mask_missing", "no mask for this image")
    else:
        return None, None
    check_mask(ids, image_size, rules.mask_classes)
    return path, int(ids.max()) if ids.size else 0


def _checked(candidate: CandidateRecord, rules: RecordRules) -> IngestRecord:
    explicit_id = None if _is_missing(candidate.record_id) else _text_key(
        candidate.record_id, "id_invalid", _column(rules.id_column, "record id"))
    group = None
    if rules.group_column:
        if _is_missing(candidate.group):
            raise RecordRejected("group_missing", f"group column {rules.group_column!r} has no value (the record's group)")
        group = _text_key(candidate.group, "group_invalid", _column(rules.group_column, "group"))
    caption = _caption(candidate.caption, rules)
    label = _label(candidate.label, rules)
    targets = None
    if rules.target_columns:
        if candidate.targets is None:
            raise RecordRejected("target_missing", f"no values for the target columns {', '.join(map(repr, rules.target_columns))}")
        targets = _finite_numbers(candidate.targets, rules.target_columns, "target")
    if rules.kind == "text":  # the text alone is the content: the same text twice is a duplicate, whatever its label
        sha256 = content_hash(caption)
        return IngestRecord(explicit_id or candidate.default_id or sha256, sha256, candidate.layout_split, caption, label,
                            targets, group=group)
    if rules.kind == "table":
        features = _finite_numbers(candidate.features, rules.feature_columns, "feature")
        sha256 = content_hash(features, targets, label)
        record_id = explicit_id or candidate.default_id or sha256
        return IngestRecord(record_id, sha256, candidate.layout_split, caption, label, targets, features, group=group)
    image, sha256, image_path = _image(candidate, rules)
    mask_path, mask_max = _mask(candidate, rules, image.size)
    default_id = image_path.relative_to(rules.root).as_posix() if image_path is not None and rules.root else candidate.default_id
    return IngestRecord(
        record_id=explicit_id or default_id or sha256, sha256=sha256, layout_split=candidate.layout_split,
        caption=caption, label=label, targets=targets, image_path=image_path, image_array=candidate.image_array,
        mask_path=mask_path, mask_array=candidate.mask_array, group=group, mask_max_class=mask_max)


def validate_record(candidate: CandidateRecord, rules: RecordRules) -> IngestRecord | RejectedRecord:
    """The checked record, or the reason it cannot be used. Never raises for anything the record holds."""
    try:
        return _checked(candidate, rules)
    except RecordRejected as problem:
        return RejectedRecord(candidate.source, candidate.ref, problem.reason, problem.rule)
    except Exception as exc:  # record content must never stop ingest: an unforeseen failure is a rejection too
        message = str(exc)
        message = message if len(message) <= 300 else message[:297] + "..."
        return RejectedRecord(candidate.source, candidate.ref, f"check failed ({type(exc).__name__}: {message})",
                              "unexpected_error")


def record_image(record: IngestRecord, limits: ImageLimits) -> Image.Image:
    """The record's image as RGB, decoded exactly as its check decoded it."""
    if record.image_array is not None:
        return image_array_to_rgb(_read(record.image_array), limits)
    assert record.image_path is not None
    return decode_image_file(record.image_path, limits)


def record_mask(record: IngestRecord, limits: ImageLimits) -> np.ndarray | None:
    """The record's mask as uint8 class ids, or None when it has none."""
    if record.mask_array is not None:
        return mask_class_ids(_read(record.mask_array))
    return decode_mask_file(record.mask_path, limits) if record.mask_path is not None else None


def record_alpha(record: IngestRecord, limits: ImageLimits) -> np.ndarray | None:
    """The alpha channel of the record's image as uint8 (H, W), or None when it has none (ingest.alpha_mask)."""
    if record.image_array is not None:
        return alpha_channel(_read(record.image_array))
    assert record.image_path is not None
    return decode_alpha_file(record.image_path, limits)
