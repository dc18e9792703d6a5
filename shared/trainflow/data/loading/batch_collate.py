"""Turning fetched records into one batch: pre-built batches pass through, variable-length fields are padded.

A dataset that reads a whole batch at once (`__getitems__`) returns a
RecordBatch: the collated tensors, already stacked. `collate_records` hands it
on untouched (no per-record dicts, no second copy); torch's default_collate
still works on it, record by record, for code that uses a plain DataLoader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate


class RecordBatch(Sequence):
    """A batch already collated into tensors, that still reads as a sequence of per-record dicts."""

    def __init__(self, collated: dict[str, torch.Tensor]) -> None:
        self.collated = collated

    def __len__(self) -> int:
        return len(next(iter(self.collated.values()))) if self.collated else 0

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= position < len(self):
            raise IndexError(position)
        return {name: value[position] for name, value in self.collated.items()}


def pad_collate(records: Sequence[Mapping[str, Any]], pad_values: Mapping[str, int | float] | None = None) -> dict[str, Any]:
    """Collate dict records; a field of 1-D tensors of different lengths (e.g. caption token ids) is
    right-padded to the longest (with pad_values[field], default 0) and gets a `<field>_lengths` tensor.

    Everything else goes through torch's default_collate (strings stay a list).
    Raises ValueError when a field's tensors differ in more than length.
    """
    pad_values = pad_values or {}
    batch: dict[str, Any] = {}
    for name in records[0]:
        values = [record[name] for record in records]
        first = values[0]
        ragged = isinstance(first, torch.Tensor) and any(
            not isinstance(v, torch.Tensor) or v.shape != first.shape for v in values)
        if not ragged:
            batch[name] = default_collate(values)
            continue
        if any(not isinstance(v, torch.Tensor) or v.dim() != 1 for v in values):
            raise ValueError(f"field {name!r}: only 1-D tensors of different lengths can be padded")
        lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
        padded = first.new_full((len(values), int(lengths.max())), pad_values.get(name, 0))
        for row, value in enumerate(values):
            padded[row, : len(value)] = value
        batch[name], batch[f"{name}_lengths"] = padded, lengths
    return batch


def collate_records(records: Any) -> Any:
    """The loader factory's collate: a RecordBatch as is; dict records padded where ragged; else default_collate."""
    if isinstance(records, RecordBatch):
        return records.collated
    if records and isinstance(records[0], Mapping):
        return pad_collate(records)
    return default_collate(records)
