"""An HDF5 file as CandidateRecords: equal-length datasets named by the ingest *_column fields.

    image_column     (N,H,W) or (N,H,W,C) uint8, C in 1/3/4   (or)   feature_columns: (N,F) or several (N,)
    label_column     (N,) class indices (or names listed in ingest.class_names)
    target_columns   several (N,) or one (N,T)
    mask_column      (N,H,W) integer class ids
    caption_column, id_column, group_column   (N,) strings or integers (optional)

Images and masks are read one row at a time when a record is checked or snapshotted (files stay open until
`close_hdf5_files`), so a file larger than memory can be ingested. A file whose datasets are missing, of
unequal length or of a dtype their role cannot hold (compound, complex, references, variable-length sequences,
strings where numbers belong) is one UserFacingError naming the dataset and its dtype; a bad value in one row
is that row's rejection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trainflow.config import IngestConfig
from trainflow.data.checks.record_validation import CandidateRecord
from trainflow.data.sources.candidates import SourceCandidates
from trainflow.errors import UserFacingError

_OPEN_FILES: dict[Path, h5py.File] = {}


def _open(path: Path) -> h5py.File:
    if path not in _OPEN_FILES:
        _OPEN_FILES[path] = h5py.File(path, "r")
    return _OPEN_FILES[path]


def close_hdf5_files() -> None:
    """Close every file opened for Hdf5Row reads (ingest calls this when it is done)."""
    while _OPEN_FILES:
        _OPEN_FILES.popitem()[1].close()


@dataclasses.dataclass(frozen=True)
class Hdf5Row:
    """One row of an HDF5 dataset, read on demand."""

    path: Path
    dataset: str
    index: int

    def read(self) -> np.ndarray:
        return np.asarray(_open(self.path)[self.dataset][self.index])


# What each role of a dataset may hold, as numpy dtype kinds ("S": any string, fixed or variable length).
NUMBERS, LABELS, TEXT, KEYS, CLASS_IDS = "iuf", "iufS", "S", "iuS", "iu"
_KIND_WORDS = {"iuf": "integers or floats", "iufS": "integer class indices or class-name strings", "S": "strings",
               "iuS": "integers or strings", "iu": "integer class ids", "u": "uint8 (N,H,W) or (N,H,W,C) arrays"}


def _dtype_text(dtype: np.dtype) -> str:
    """A dtype as a person reads it: 'compound (x, y)', 'variable-length sequence of int64', 'complex128'."""
    if dtype.names:
        return f"compound ({', '.join(dtype.names[:8])}{', ...' if len(dtype.names) > 8 else ''})"
    if h5py.check_string_dtype(dtype) is not None:
        return "string"
    if (base := h5py.check_vlen_dtype(dtype)) is not None:
        return f"variable-length sequence of {base}"
    if h5py.check_ref_dtype(dtype) is not None:
        return "object reference"
    if dtype.subdtype is not None:
        return f"array of {dtype.subdtype[0]} {dtype.subdtype[1]} per element"
    return str(dtype)


def _check_dtype(dataset: h5py.Dataset, path: Path, name: str, role: str, kinds: str) -> None:
    """One sentence naming the dataset and its dtype when its values cannot fill `role`."""
    try:
        dtype = dataset.dtype
    except (TypeError, ValueError) as exc:  # an HDF5 type with no numpy equivalent (bitfield, opaque...)
        raise UserFacingError(f"HDF5 dataset {name!r} in {path} has a type numpy cannot hold ({exc}); store {role} "
                              f"as {_KIND_WORDS[kinds]}") from None
    kind = "S" if h5py.check_string_dtype(dtype) is not None else dtype.kind
    if kind not in kinds or dtype.subdtype is not None:
        raise UserFacingError(f"HDF5 dataset {name!r} in {path} has dtype {_dtype_text(dtype)}, which cannot hold "
                              f"{role}; store them as {_KIND_WORDS[kinds]}")


def _dataset(handle: h5py.File, path: Path, name: str, length: int | None, role: str | None = None,
             kinds: str = "") -> h5py.Dataset:
    found = handle.get(name)
    if not isinstance(found, h5py.Dataset):
        names: list[str] = []
        handle.visititems(lambda key, item: names.append(key) if isinstance(item, h5py.Dataset) else None)
        raise UserFacingError(f"HDF5 file {path} has no dataset {name!r}; its datasets are {', '.join(names[:20]) or 'none'}")
    if role is not None:
        _check_dtype(found, path, name, role, kinds)
    if length is not None and (found.ndim == 0 or found.shape[0] != length):
        raise UserFacingError(f"HDF5 dataset {name!r} in {path} has shape {found.shape}; it needs {length} rows like the others")
    return found


def _read_all(dataset: h5py.Dataset, path: Path, name: str) -> np.ndarray:
    try:
        return np.asarray(dataset[()])
    except (OSError, TypeError, ValueError) as exc:  # a damaged chunk, a filter this h5py lacks
        raise UserFacingError(f"HDF5 dataset {name!r} in {path} cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None


def _values(dataset: h5py.Dataset, path: Path, name: str) -> list[Any]:
    """Per-row Python values; byte strings decoded as UTF-8 where they decode (the rest is rejected per row)."""
    values = _read_all(dataset, path, name).tolist()

    def decoded(value: Any) -> Any:
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value
        return value

    return [decoded(v) for v in values]


def _columns(handle: h5py.File, path: Path, names: list[str], length: int, role: str) -> tuple[np.ndarray, list[str]]:
    """Several (N,) datasets or one (N,K) dataset of numbers as an (N,K) array, with a name per column."""
    arrays, column_names = [], []
    for name in names:
        data = _read_all(_dataset(handle, path, name, length, role, NUMBERS), path, name)
        if data.ndim == 1:
            arrays.append(data[:, None])
            column_names.append(name)
        elif data.ndim == 2:
            arrays.append(data)
            column_names += [f"{name}_{j}" for j in range(data.shape[1])]
        else:
            raise UserFacingError(f"HDF5 dataset {name!r} in {path} has shape {data.shape}; use (N,) or (N,K)")
    return np.concatenate(arrays, axis=1), column_names


def _image_dataset(handle: h5py.File, path: Path, name: str) -> h5py.Dataset:
    images = _dataset(handle, path, name, None, "images", "u")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserFacingError(f"HDF5 dataset {name!r} in {path} is {_dtype_text(images.dtype)} {images.shape}; images "
                              "must be uint8 (N,H,W) or (N,H,W,C)")
    return images


def hdf5_candidates(cfg: IngestConfig) -> SourceCandidates:
    """The file's rows as candidates. Raises UserFacingError for a missing/unreadable file or dataset."""
    path = Path(cfg.hdf5 or "").expanduser().resolve()
    if not path.is_file():
        raise UserFacingError(f"HDF5 file {path} does not exist; set ingest.hdf5 to your .h5 file")
    try:
        handle = _open(path)
    except OSError as exc:
        raise UserFacingError(f"{path} is not a readable HDF5 file ({exc})") from None
    if cfg.feature_columns is None and cfg.image_column not in handle:
        raise UserFacingError(f"HDF5 file {path} has no dataset {cfg.image_column!r}; set ingest.image_column to its "
                              "images dataset (N,H,W[,C]) or ingest.feature_columns to its feature datasets")
    images = None if cfg.feature_columns else _image_dataset(handle, path, cfg.image_column)
    features, feature_names = (None, None)
    if cfg.feature_columns:
        first = _dataset(handle, path, cfg.feature_columns[0], None)
        features, feature_names = _columns(handle, path, cfg.feature_columns, first.shape[0] if first.ndim else 0,
                                           "features")
    length = images.shape[0] if images is not None else features.shape[0]  # type: ignore[union-attr]
    targets, target_names = (_columns(handle, path, cfg.target_columns, length, "targets") if cfg.target_columns
                             else (None, None))
    optional = {field: _values(_dataset(handle, path, name, length, role, kinds), path, name)
                for field, name, role, kinds in (("label", cfg.label_column, "labels", LABELS),
                                                 ("caption", cfg.caption_column, "captions", TEXT),
                                                 ("record_id", cfg.id_column, "record ids", KEYS),
                                                 ("group", cfg.group_column, "groups", KEYS))
                if name and (field != "caption" or name in handle)}
    if cfg.mask_column:
        _dataset(handle, path, cfg.mask_column, length, "masks", CLASS_IDS)
    candidates = []
    for index in range(length):
        where = f"{path.name}[{index}]"
        candidates.append(CandidateRecord(
            source=where, ref=where, default_id=where,
            image_array=Hdf5Row(path, cfg.image_column, index) if images is not None else None,
            mask_array=Hdf5Row(path, cfg.mask_column, index) if cfg.mask_column else None,
            targets=targets[index].tolist() if targets is not None else None,
            features=features[index] if features is not None else None,
            **{field: values[index] for field, values in optional.items()},
        ))
    return SourceCandidates(candidates, "image" if images is not None else "table", target_names=target_names,
                            feature_names=feature_names)
