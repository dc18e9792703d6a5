"""Seeded train/val/test assignment."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from sklearn.model_selection import train_test_split

from trainflow.config import SplitFractions
from trainflow.data.records import ValidRecord
from trainflow.errors import UserFacingError


def assign_splits(records: Sequence[ValidRecord], fractions: SplitFractions, seed: int) -> dict[str, str]:
    """Map record id -> 'train' | 'val' | 'test'.

    If the dataset's folder layout already names all three splits, that
    assignment is kept (the user chose it). Otherwise records are split with
    `seed`, stratified by label when every class has enough members, so the
    same data and seed always give the same split.
    """
    layout = {r.record_id: r.layout_split for r in records}
    if all(layout.values()) and set(layout.values()) == {"train", "val", "test"}:
        return dict(layout)  # type: ignore[arg-type]
    if len(records) < 3:
        raise UserFacingError(f"only {len(records)} valid records; a train/val/test split needs at least 3")
    ids = [r.record_id for r in records]
    labels = [r.label for r in records]
    stratify = labels if _can_stratify(labels, fractions) else None
    holdout = fractions.val + fractions.test
    train_ids, rest_ids, _, rest_labels = train_test_split(
        ids, labels, test_size=holdout, random_state=seed, stratify=stratify
    )
    rest_stratify = rest_labels if stratify is not None and _can_stratify(rest_labels, None) else None
    val_ids, test_ids = train_test_split(
        rest_ids, test_size=fractions.test / holdout, random_state=seed, stratify=rest_stratify
    )
    assignment = {i: "train" for i in train_ids}
    assignment.update({i: "val" for i in val_ids})
    assignment.update({i: "test" for i in test_ids})
    return assignment


def _can_stratify(labels: Sequence[int | None], fractions: SplitFractions | None) -> bool:
    if any(label is None for label in labels):
        return False
    counts = Counter(labels)
    smallest_needed = 4 if fractions is not None else 2
    return len(counts) > 1 and min(counts.values()) >= smallest_needed
