"""The folds a cross-validation trains: folds.json's, repeated with new seeds, each with an inner validation part.

Repeat 0 is the ingest's own folds.json. Repeat r > 0 cuts the same non-test records again with seed + r
(the same splitter kind: k-fold, stratified, or grouped), so the test holdout never moves. Within each
fold, the engine's early stopping needs a validation split that is not the held-out fold (stopping on the
records it is scored on would flatter every fold), so a share of the fold's training records is set aside:
ingest.split.val / (train + val), drawn the way the split kind draws (groups whole, classes in proportion).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from trainflow.config import IngestConfig
from trainflow.data.kfold_split import _splitter
from trainflow.data.manifest import read_folds, read_manifest
from trainflow.data.split import group_assignment, random_assignment, stratified_assignment
from trainflow.errors import UserFacingError


@dataclasses.dataclass(frozen=True)
class FoldRun:
    repeat: int
    fold: int
    train: list[str]
    val: list[str]  # the inner validation part (early stopping, best checkpoint)
    held_out: list[str]  # scored with the task's metrics: this fold's out-of-fold records

    @property
    def name(self) -> str:
        return f"r{self.repeat}-f{self.fold}"

    def splits_of(self) -> dict[str, list[str]]:
        """record id -> splits for the fold's dataset; the held-out fold is its 'test' split."""
        out = {i: ["train"] for i in self.train}
        out.update({i: ["val"] for i in self.val})
        out.update({i: ["test"] for i in self.held_out})
        return out


def _inner_split(ids: list[str], dataset_dir: Path, ingest: IngestConfig, kind: str, seed: int) -> tuple[list[str], list[str]]:
    share = ingest.split.val / (ingest.split.train + ingest.split.val)
    fractions, names = (1 - share, share), ("train", "val")
    entries = {e.record_id: e for e in read_manifest(dataset_dir)}
    if ingest.group_column:
        assignment = group_assignment(ids, [entries[i].group or i for i in ids], fractions, seed, names)
    elif kind == "stratified_kfold":
        assignment = stratified_assignment(ids, [int(entries[i].label) for i in ids], fractions, seed, names)
    else:
        assignment = random_assignment(ids, fractions, seed, names)
    return sorted(i for i in ids if assignment[i] == "train"), sorted(i for i in ids if assignment[i] == "val")


def _recut(dataset_dir: Path, plan: dict, seed: int) -> list[tuple[list[str], list[str]]]:
    test = set(plan["test"])
    entries = sorted((e for e in read_manifest(dataset_dir) if e.record_id not in test), key=lambda e: e.record_id)
    ids = np.array([e.record_id for e in entries], dtype=object)
    labels = np.array([e.label if e.label is not None else -1 for e in entries])
    groups = np.array([e.group for e in entries], dtype=object) if plan["grouped"] else None
    splitter = _splitter(plan["kind"], plan["num_folds"], seed, plan["grouped"])
    return [(sorted(ids[a].tolist()), sorted(ids[b].tolist())) for a, b in splitter.split(ids, labels, groups)]


def fold_runs(dataset_dir: str | Path, ingest: IngestConfig, repeats: int, seed: int) -> list[FoldRun]:
    """Every (repeat, fold) to train, in order; UserFacingError when a fold's inner split cannot be cut."""
    root = Path(dataset_dir)
    plan = read_folds(root)
    runs = []
    for repeat in range(repeats):
        folds = ([(f["train"], f["val"]) for f in plan["folds"]] if repeat == 0 else _recut(root, plan, seed + repeat))
        for fold, (rest, held_out) in enumerate(folds):
            try:
                train, val = _inner_split(rest, root, ingest, plan["kind"], seed + 1000 * repeat + fold)
            except UserFacingError as exc:
                raise UserFacingError(f"fold {fold} (repeat {repeat}): cannot set aside a validation part of its "
                                      f"{len(rest)} training records: {exc}") from None
            runs.append(FoldRun(repeat, fold, train, val, sorted(held_out)))
    return runs
