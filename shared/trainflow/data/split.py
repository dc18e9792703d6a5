"""Train/val/test assignment: seeded random, stratified, group, and the stable hash split.

Every kind is a pure function of the records (their ids, labels, groups, content hashes), the fractions and the
seed (or, for hash, the salt alone), so the same inputs give the same manifest byte for byte. Every split is
non-empty, or a UserFacingError says exactly why it cannot be. A folder layout that names all three splits is
kept as the user chose it. K-fold kinds live in trainflow.data.kfold_split.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from trainflow.config import SplitFractions
from trainflow.data.sources.read_source import IngestRecord
from trainflow.errors import UserFacingError

SPLITS = ("train", "val", "test")


def fractions_text(fractions: Sequence[float]) -> str:
    return "/".join(f"{f:g}" for f in fractions)


def split_counts(n: int, fractions: Sequence[float], what: str = "records", names: Sequence[str] = SPLITS) -> list[int]:
    """How many of `n` go to each split: largest remainder, then at least one each (taken from the largest).

    Raises UserFacingError when `n` is smaller than the number of splits.
    """
    if n < len(fractions):
        raise UserFacingError(f"{n} {what} cannot fill {'/'.join(names)} at {fractions_text(fractions)}: every split "
                              f"needs at least one; add {what} or change ingest.split")
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):
        if counts[i] == 0:
            counts[i] += 1
            counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
    return counts


def layout_assignment(records: Sequence[IngestRecord]) -> dict[str, str] | None:
    """The folder layout's splits when every record has one and all three appear, else None."""
    layout = {r.record_id: r.layout_split for r in records}
    if all(layout.values()) and set(layout.values()) == set(SPLITS):
        return dict(layout)  # type: ignore[arg-type]
    return None


def can_stratify(labels: Sequence[int | None], smallest_class: int = 4) -> bool:
    """Every record labelled, at least two classes, and each class with `smallest_class` members or more."""
    if not labels or any(label is None for label in labels):
        return False
    counts = Counter(labels)
    return len(counts) > 1 and min(counts.values()) >= smallest_class


def _allocate(class_sizes: list[int], fractions: Sequence[float], totals: list[int]) -> list[list[int]]:
    """Per class, how many records go to each split: each within one record of its share, totals exact.

    A two-pass sklearn split (train vs rest, then val vs test) compounds rounding to up to 1.5 records per class,
    so the three-way counts are rounded here: floors first, then each class's remaining records go to the splits
    still furthest below their totals (largest-demand first, which meets the totals whenever that is possible).
    """
    table = [[int(size * f) for f in fractions] for size in class_sizes]
    demand = [total - sum(row[s] for row in table) for s, total in enumerate(totals)]
    extras = [size - sum(row) for size, row in zip(class_sizes, table)]
    for k in sorted(range(len(class_sizes)), key=lambda k: (-extras[k], k)):
        remainders = [class_sizes[k] * f - table[k][s] for s, f in enumerate(fractions)]
        for s in sorted(range(len(fractions)), key=lambda s: (-demand[s], -remainders[s], s))[: extras[k]]:
            table[k][s] += 1
            demand[s] -= 1
    for s in range(len(fractions)):  # rare leftovers (tiny sets): move records from over-full splits
        while demand[s] > 0:
            over = max(range(len(fractions)), key=lambda t: -demand[t])
            k = max((k for k in range(len(class_sizes)) if table[k][over] > 0),
                    key=lambda k: table[k][over] - class_sizes[k] * fractions[over])
            table[k][over] -= 1
            table[k][s] += 1
            demand[over] += 1
            demand[s] -= 1
    return table


def stratified_assignment(ids: Sequence[str], labels: Sequence[int], fractions: Sequence[float], seed: int,
                          names: Sequence[str] = SPLITS) -> dict[str, str]:
    """Each class cut into the splits in proportion (within one record), records drawn with `seed`."""
    totals = split_counts(len(ids), fractions, names=names)
    by_class: dict[int, list[str]] = defaultdict(list)
    for record_id, label in sorted(zip(ids, labels)):
        by_class[label].append(record_id)
    classes = sorted(by_class)
    table = _allocate([len(by_class[c]) for c in classes], fractions, totals)
    rng = np.random.default_rng(seed)
    assignment = {}
    for label, counts in zip(classes, table):
        members = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        for name, start, count in zip(names, np.cumsum([0, *counts[:-1]]), counts):
            assignment.update({record_id: name for record_id in members[start : start + count]})
    return assignment


def random_assignment(ids: Sequence[str], fractions: Sequence[float], seed: int, names: Sequence[str] = SPLITS) -> dict[str, str]:
    counts = split_counts(len(ids), fractions, names=names)
    ordered = sorted(ids)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    starts = np.cumsum([0, *counts[:-1]])
    return {record_id: name for name, start, count in zip(names, starts, counts) for record_id in shuffled[start : start + count]}


def group_assignment(ids: Sequence[str], groups: Sequence[str], fractions: Sequence[float], seed: int,
                     names: Sequence[str] = SPLITS) -> dict[str, str]:
    """Whole groups to each split (fractions count groups), drawn by scikit-learn's GroupShuffleSplit."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    ids, groups = [ids[i] for i in order], np.array([groups[i] for i in order], dtype=object)
    counts = split_counts(len(set(groups.tolist())), fractions, what=f"groups (in {len(ids)} records)", names=names)
    assignment: dict[str, str] = {}
    remaining = np.arange(len(ids))
    for position, name in enumerate(names[:-1]):
        rest = sum(counts[position + 1 :])
        splitter = GroupShuffleSplit(n_splits=1, test_size=rest, random_state=seed)
        taken, left = next(splitter.split(remaining, groups=groups[remaining]))
        assignment.update({ids[i]: name for i in remaining[taken]})
        remaining = remaining[left]
    assignment.update({ids[i]: names[-1] for i in remaining})
    return assignment


def hash_bucket(key: str, salt: str) -> float:
    """A number in [0, 1) that depends only on `key` and `salt`."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_assignment(records: Sequence[IngestRecord], cfg: SplitFractions) -> dict[str, str]:
    """Each record's split from its id (or content hash) and the salt alone: new records never move old ones."""
    edges = (cfg.train, cfg.train + cfg.val)
    assignment = {}
    for record in records:
        bucket = hash_bucket(record.record_id if cfg.hash_key == "id" else record.sha256, cfg.salt)
        assignment[record.record_id] = "train" if bucket < edges[0] else "val" if bucket < edges[1] else "test"
    return assignment


def require_labels(records: Sequence[IngestRecord], kind: str) -> list[int]:
    unlabelled = sum(r.label is None for r in records)
    if unlabelled:
        raise UserFacingError(f"ingest.split.kind: {kind} needs a class label on every record, but {unlabelled} of "
                              f"{len(records)} have none; set ingest.label_column or use kind: random or hash")
    return [r.label for r in records]  # type: ignore[misc]


def check_non_empty(assignment: dict[str, str], records: Sequence[IngestRecord], cfg: SplitFractions, kind: str) -> None:
    """Raise UserFacingError naming the empty split, the counts and what to change."""
    counts = Counter(assignment.values())
    empty = [name for name in SPLITS if not counts[name]]
    if empty:
        given = ", ".join(f"{name} {counts[name]}" for name in SPLITS)
        fix = "add records, change split.salt, or use kind: random" if kind == "hash" else "add records or change ingest.split"
        raise UserFacingError(f"{len(records)} records cannot fill train/val/test at "
                              f"{fractions_text((cfg.train, cfg.val, cfg.test))} with the {kind} split (it gives "
                              f"{given}; {' and '.join(empty)} would be empty); {fix}")


def effective_kind(records: Sequence[IngestRecord], cfg: SplitFractions) -> str:
    """The split that will be made: 'layout' when the folders name all three splits, auto resolved."""
    if cfg.kind not in ("kfold", "stratified_kfold") and layout_assignment(records):
        return "layout"
    if cfg.kind == "auto":
        return "stratified" if can_stratify([r.label for r in records]) else "random"
    return cfg.kind


def assign_splits(records: Sequence[IngestRecord], cfg: SplitFractions, seed: int) -> dict[str, str]:
    """Map record id -> 'train' | 'val' | 'test' for the non-k-fold kinds (see SplitFractions.kind).

    Raises UserFacingError when a split would be empty, saying why.
    """
    kind = effective_kind(records, cfg)
    if kind == "layout":
        return layout_assignment(records)  # type: ignore[return-value]
    ids = [r.record_id for r in records]
    fractions = (cfg.train, cfg.val, cfg.test)
    if kind == "hash":
        assignment = hash_assignment(records, cfg)
    elif kind == "group":
        assignment = group_assignment(ids, [r.group for r in records], fractions, seed)  # type: ignore[misc]
    elif kind == "stratified":
        assignment = stratified_assignment(ids, require_labels(records, kind), fractions, seed)
    elif kind == "random":
        assignment = random_assignment(ids, fractions, seed)
    else:
        raise ValueError(f"assign_splits does not handle kind {kind}; k-fold kinds go through assign_folds")
    check_non_empty(assignment, records, cfg, kind)
    return assignment
