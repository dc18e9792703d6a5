"""CSV / JSONL / Parquet tables as CandidateRecords: one row per record.

A table whose columns include ingest.image_column holds images (paths relative to the table's folder, which
they must stay inside) with caption/label/target/mask columns; any other table holds feature rows. Labels in
a table are class names (ingest.class_names, or the distinct values of the column, numbers in numeric order).
With ingest.text_column the table holds texts (kind "text"): each row's text travels as its caption.

Rows are read with the standard csv module (so a malformed row is one rejection with its line number, not a
failed parse), our JSON-lines reader, or pyarrow for Parquet; a byte order mark at the start of a text file is
not part of its first column or record. A JSON-lines table's columns are the declared ones and the keys most
rows hold: a key only a few rows hold is left out with a warning, so one odd row cannot change the features
of every other row. A label cell holding a control character or line break is that row's rejection, never a
class of its own.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from trainflow.config import IngestConfig
from trainflow.data.checks.quarantine import DataWarning, RejectedRecord
from trainflow.data.checks.record_validation import CandidateRecord, hidden_character
from trainflow.data.sources.candidates import SourceCandidates
from trainflow.data.sources.image_folder import read_json_lines, reference_text
from trainflow.errors import UserFacingError


Rows = list[tuple[str, dict[str, Any]]]  # (where the row is, e.g. "data.csv:7", {column: value})


def _csv_rows(path: Path, rejected: list[RejectedRecord]) -> tuple[list[str], Rows]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows: Rows = []
    # Undecodable bytes become U+FFFD, so one bad byte costs its row (paths and captions are checked for it).
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise UserFacingError(f"table {path} is empty; its first line must name the columns")
        if repeated := sorted({name for name in header if header.count(name) > 1}):
            raise UserFacingError(f"table {path} names column {repeated[0][:80]!r} more than once in its header; "
                                  "give every column its own name")
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                rejected.append(RejectedRecord(f"{path.name}:{reader.line_num}", f"{path.name}:{reader.line_num}",
                                               f"row is not valid CSV ({exc})", "table_row"))
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                source = f"{path.name}:{reader.line_num}"
                rejected.append(RejectedRecord(source, source, f"row has {len(cells)} cells but the header names "
                                                               f"{len(header)} columns", "table_row"))
                continue
            rows.append((f"{path.name}:{reader.line_num}", {name: (cell if cell != "" else None) for name, cell in zip(header, cells)}))
    return header, rows


def _jsonl_rows(path: Path, rejected: list[RejectedRecord]) -> tuple[list[str], Rows]:
    rows, columns = [], {}
    for number, row in read_json_lines(path):
        if not isinstance(row, dict):
            source = f"{path.name}:{number}"
            what = f"not valid JSON ({type(row).__name__})" if isinstance(row, Exception) else f"a JSON {type(row).__name__}, not an object"
            rejected.append(RejectedRecord(source, source, f"line is {what}", "table_row"))
            continue
        columns.update(dict.fromkeys(row))
        rows.append((f"{path.name}:{number}", row))
    return list(columns), rows


def _parquet_rows(path: Path) -> tuple[list[str], Rows]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise UserFacingError(f"table {path} is not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return list(table.column_names), [(f"{path.name}[row {index}]", row) for index, row in enumerate(table.to_pylist())]


def read_table_rows(path: Path, table_format: str, rejected: list[RejectedRecord]) -> tuple[list[str], Rows]:
    """(column names, [(where, {column: value})]); malformed rows go to `rejected`."""
    if not path.is_file():
        raise UserFacingError(f"table {path} does not exist; set ingest.table to a .csv, .jsonl or .parquet file")
    try:
        if table_format == "csv":
            return _csv_rows(path, rejected)
        if table_format == "jsonl":
            return _jsonl_rows(path, rejected)
    except OSError as exc:
        raise UserFacingError(f"table {path} cannot be read ({type(exc).__name__}: {exc})") from None
    return _parquet_rows(path)


def as_number(value: Any) -> Any:
    """A CSV cell that spells a number as that number; anything else unchanged (checked later)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(as_number(value), (int, float))


def _default_features(columns: list[str], rows: Rows, used: set[str]) -> list[str]:
    """Columns (not otherwise used) in which most non-empty values are numbers."""
    features = []
    for column in columns:
        values = [row.get(column) for _, row in rows if row.get(column) is not None]
        if column not in used and values and sum(map(_is_number, values)) * 2 > len(values):
            features.append(column)
    return features


def label_names(values: Iterator[Any]) -> list[str]:
    """The distinct class names in a label column: numbers in numeric order, otherwise sorted as text."""
    names = set()
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            names.add(str(int(value)))
        elif isinstance(value, str) and value.strip() and not hidden_character(value.strip(" ")):
            names.add(value.strip())  # a cell with a control character is rejected by its row's check
    numeric = all(name.lstrip("-").isdigit() for name in names)
    return sorted(names, key=lambda name: (int(name), name) if numeric else (0, name))


def _majority_columns(columns: list[str], rows: Rows, declared: set[str]) -> tuple[list[str], list[DataWarning]]:
    """The declared columns and the keys more than half the rows hold; a warning names any key left out.

    Only a JSON-lines table can hold keys that other rows lack (a CSV header and a Parquet schema name every
    column of every row).
    """
    held = Counter(key for _, row in rows for key in row)
    kept = [c for c in columns if c in declared or held[c] * 2 > len(rows)]
    left_out = [c for c in columns if c not in kept]
    if not left_out:
        return kept, []
    examples = tuple(source for source, row in rows if any(key in row for key in left_out))
    shown = ", ".join(f"{str(c)[:40]!r} ({held[c]} of {len(rows)} rows)" for c in left_out[:5])
    message = (f"{len(examples)} rows hold keys most rows lack: {shown}{' ...' if len(left_out) > 5 else ''}; "
               "they were left out of the table's columns (name one in ingest.feature_columns to use it)")
    return kept, [DataWarning("table_rare_keys", len(examples), message, examples[:5])]


def table_candidates(cfg: IngestConfig) -> SourceCandidates:
    """The configured table's rows as candidates. Raises UserFacingError for a missing file or a missing column."""
    path = Path(cfg.table or "").expanduser().resolve()
    rejected: list[RejectedRecord] = []
    columns, rows = read_table_rows(path, cfg.resolved_table_format, rejected)
    is_text = cfg.text_column is not None  # a table of texts: no images, no features
    targets = list(cfg.target_columns or [])
    named = [c for c in (cfg.text_column, cfg.label_column, cfg.mask_column, cfg.id_column, cfg.group_column) if c]
    missing = [c for c in [*targets, *named, *(cfg.feature_columns or [])] if c not in columns]
    if missing:
        raise UserFacingError(f"table {path} has no column {', '.join(map(repr, missing))}; its columns are "
                              f"{', '.join(str(c)[:80] for c in columns[:20])}")
    declared = {cfg.caption_column, *targets, *named, *(cfg.feature_columns or [])}
    columns, warnings = _majority_columns(columns, rows, declared)
    is_image = not is_text and cfg.image_column in columns
    used = {cfg.image_column, cfg.caption_column, *targets, *named}
    features = None if is_image or is_text else list(cfg.feature_columns or _default_features(columns, rows, used))
    if features is not None and not features:
        raise UserFacingError(f"table {path}: no numeric feature columns and no '{cfg.image_column}' image column; "
                              "set ingest.feature_columns or ingest.image_column")
    class_names = None
    if cfg.label_column:
        class_names = list(cfg.class_names or label_names(row.get(cfg.label_column) for _, row in rows))
    candidates = []
    for source, row in rows:
        candidates.append(CandidateRecord(
            source=source, ref=reference_text(row.get(cfg.image_column)) if is_image else source, default_id=source,
            base_dir=path.parent, record_id=row.get(cfg.id_column) if cfg.id_column else None,
            image=row.get(cfg.image_column) if is_image else None, mask=row.get(cfg.mask_column) if cfg.mask_column else None,
            caption=row.get(cfg.text_column or cfg.caption_column), label=row.get(cfg.label_column) if cfg.label_column else None,
            targets=[as_number(row.get(c)) for c in targets] if targets else None,
            features=[as_number(row.get(c)) for c in features] if features is not None else None,
            group=row.get(cfg.group_column) if cfg.group_column else None,
        ))
    # Image paths resolve against the table's folder and must stay inside it.
    return SourceCandidates(candidates, "image" if is_image else "text" if is_text else "table", path.parent, rejected,
                            class_names, cfg.target_columns, features, labels_are_names=True, warnings=warnings)
