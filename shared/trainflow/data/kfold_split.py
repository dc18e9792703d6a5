"""K-fold and stratified k-fold plans for cross-validation: a held-out test split, then K train/val folds.

    folds.json (in the dataset artifact)
        {"kind": "kfold" | "stratified_kfold", "num_folds": K, "seed": S, "grouped": bool,
         "test": [record ids], "folds": [{"fold": 0, "train": [ids], "val": [ids]}, ...]}

The manifest's own train/val is fold 0, so a single run trains on the first fold. With ingest.group_column the
test holdout and the folds keep every group whole (GroupShuffleSplit, GroupKFold, StratifiedGroupKFold).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from trainflow.config import SplitFractions
from trainflow.data.sources.read_source import IngestRecord
from trainflow.data.split import (
    group_assignment, layout_assignment, random_assignment, stratified_assignment, require_labels,
)
from trainflow.errors import UserFacingError


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    test: list[str]  # held-out record ids, sorted
    folds: list[tuple[list[str], list[str]]]  # (train ids, val ids) per fold, each sorted

    def manifest_assignment(self) -> dict[str, str]:
        """record id -> split for the manifest: the test holdout plus fold 0's train/val."""
        train, val = self.folds[0]
        return {**{i: "train" for i in train}, **{i: "val" for i in val}, **{i: "test" for i in self.test}}

    def as_json(self, kind: str, seed: int, grouped: bool) -> dict[str, Any]:
        return {"kind": kind, "num_folds": len(self.folds), "seed": seed, "grouped": grouped, "test": self.test,
                "folds": [{"fold": k, "train": train, "val": val} for k, (train, val) in enumerate(self.folds)]}


def _holdout(records: Sequence[IngestRecord], cfg: SplitFractions, seed: int, grouped: bool) -> dict[str, str]:
    """record id -> 'rest' | 'test'."""
    if layout := layout_assignment(records):
        return {i: "test" if split == "test" else "rest" for i, split in layout.items()}
    ids, names, fractions = [r.record_id for r in records], ("rest", "test"), (1 - cfg.test, cfg.test)
    if grouped:
        return group_assignment(ids, [r.group for r in records], fractions, seed, names)  # type: ignore[misc]
    if cfg.kind == "stratified_kfold":
        return stratified_assignment(ids, require_labels(records, cfg.kind), fractions, seed, names)
    return random_assignment(ids, fractions, seed, names)


def _splitter(kind: str, folds: int, seed: int, grouped: bool) -> Any:
    if grouped:
        return StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if kind == "stratified_kfold" \
            else GroupKFold(folds, shuffle=True, random_state=seed)
    return StratifiedKFold(folds, shuffle=True, random_state=seed) if kind == "stratified_kfold" \
        else KFold(folds, shuffle=True, random_state=seed)


def assign_folds(records: Sequence[IngestRecord], cfg: SplitFractions, seed: int, grouped: bool) -> FoldPlan:
    """Hold out `cfg.test`, then cut the rest into `cfg.folds` folds (grouped: groups stay whole).

    Raises UserFacingError when too few records, groups or class members are left for K folds.
    """
    folds = int(cfg.folds or 0)
    holdout = _holdout(records, cfg, seed, grouped)
    rest = sorted((r for r in records if holdout[r.record_id] == "rest"), key=lambda r: r.record_id)
    units = len({r.group for r in rest}) if grouped else len(rest)
    what = "groups" if grouped else "records"
    if units < folds:
        raise UserFacingError(f"{folds} folds need at least {folds} {what} outside the test split, but only {units} are "
                              f"left of {len(records)} records; lower ingest.split.folds or add records")
    ids = np.array([r.record_id for r in rest], dtype=object)
    labels = np.array([r.label if r.label is not None else -1 for r in rest])
    groups = np.array([r.group for r in rest], dtype=object) if grouped else None
    try:
        pieces = list(_splitter(cfg.kind, folds, seed, grouped).split(ids, labels, groups))
    except ValueError as exc:  # e.g. a class with fewer members than folds
        raise UserFacingError(f"cannot cut {len(rest)} records into {folds} {cfg.kind} folds: {exc}; lower "
                              "ingest.split.folds or use kind: kfold") from None
    plan = [(sorted(ids[train].tolist()), sorted(ids[val].tolist())) for train, val in pieces]
    empty = [k for k, (train, val) in enumerate(plan) if not train or not val]
    if empty:
        raise UserFacingError(f"fold {empty[0]} of {folds} has an empty train or val part ({len(rest)} records); lower "
                              "ingest.split.folds or add records")
    return FoldPlan(sorted(i for i, split in holdout.items() if split == "test"), plan)
