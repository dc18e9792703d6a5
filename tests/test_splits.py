"""Every split kind: random, stratified, group, hash, k-fold; non-empty or a clear reason; byte-identical manifests."""

import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from broken_corpus import write_digit_imagefolder
from trainflow.artifacts import LocalArtifact
from trainflow.config import SplitFractions
from trainflow.data.kfold_split import assign_folds
from trainflow.data.manifest import read_folds
from trainflow.data.checks.record_validation import IngestRecord
from trainflow.data.split import SPLITS, assign_splits, split_counts
from trainflow.errors import UserFacingError
from trainflow.stages.ingest_split import ingest_split


def records(n, start=0, classes=None, groups=None):
    """n labelled records with distinct ids and content; class sizes from `classes` ({label: count}) if given."""
    labels = [label for label, count in sorted(classes.items()) for _ in range(count)] if classes else [i % 10 for i in range(n)]
    return [IngestRecord(record_id=f"rec-{start + i:05d}", sha256=hashlib.sha256(b"%d" % (start + i)).hexdigest(),
                         label=labels[i], group=f"g{(start + i) // groups}" if groups else None)
            for i in range(len(labels) if classes else n)]


def test_hash_split_never_moves_an_existing_record_when_ten_percent_more_arrive():
    cfg = SplitFractions(kind="hash", salt="2024")
    old = records(1000)
    before = assign_splits(old, cfg, seed=0)
    after = assign_splits(old + records(100, start=1000), cfg, seed=123)  # the seed does not matter either
    assert sum(before[i] != after[i] for i in before) == 0
    shares = Counter(after.values())
    assert abs(shares["train"] / 1100 - 0.7) < 0.05 and abs(shares["test"] / 1100 - 0.15) < 0.05


def test_hash_split_on_content_survives_renames_and_depends_on_the_salt():
    cfg = SplitFractions(kind="hash", hash_key="content", salt="a")
    old = records(300)
    renamed = [IngestRecord(record_id="renamed-" + r.record_id, sha256=r.sha256) for r in old]
    first, second = assign_splits(old, cfg, 0), assign_splits(renamed, cfg, 0)
    assert all(first[r.record_id] == second["renamed-" + r.record_id] for r in old)
    resalted = assign_splits(old, SplitFractions(kind="hash", hash_key="content", salt="b"), 0)
    assert sum(first[i] != resalted[i] for i in first) > 50


def test_group_split_keeps_every_group_in_one_split():
    data = records(240, groups=4)  # 60 groups of 4
    assignment = assign_splits(data, SplitFractions(kind="group"), seed=3)
    splits_of_group = defaultdict(set)
    for record in data:
        splits_of_group[record.group].add(assignment[record.record_id])
    assert sum(len(s) > 1 for s in splits_of_group.values()) == 0
    group_counts = Counter(next(iter(s)) for s in splits_of_group.values())
    assert (group_counts["train"], group_counts["val"], group_counts["test"]) == (42, 9, 9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", [
    {c: 20 for c in range(10)},
    {0: 97, 1: 3, 2: 41, 3: 7, 4: 1, 5: 12},
    {0: 5, 1: 5, 2: 5, 3: 5, 4: 5, 5: 5, 6: 5},
])
def test_stratified_split_keeps_each_class_within_one_record_of_its_share(seed, classes):
    data = records(0, classes=classes)
    cfg = SplitFractions(kind="stratified")
    assignment = assign_splits(data, cfg, seed)
    per_class = Counter((r.label, assignment[r.record_id]) for r in data)
    for label, size in classes.items():
        for split, share in zip(SPLITS, (cfg.train, cfg.val, cfg.test)):
            assert abs(per_class[label, split] - size * share) <= 1, (label, split)
    assert list(Counter(assignment.values())[s] for s in SPLITS) == split_counts(len(data), (0.7, 0.15, 0.15))


def test_random_split_is_seeded_and_exact():
    data = records(200)
    first = assign_splits(data, SplitFractions(kind="random"), 7)
    assert first == assign_splits(list(reversed(data)), SplitFractions(kind="random"), 7)
    assert first != assign_splits(data, SplitFractions(kind="random"), 8)
    assert Counter(first.values()) == {"train": 140, "val": 30, "test": 30}


@pytest.mark.parametrize("make, cfg, message", [
    (lambda: records(2), SplitFractions(kind="random"),
     r"2 records cannot fill train/val/test at 0.7/0.15/0.15: every split needs at least one"),
    (lambda: records(20, groups=10), SplitFractions(kind="group"),
     r"2 groups \(in 20 records\) cannot fill train/val/test"),
    (lambda: records(4), SplitFractions(kind="hash", salt="x"),
     r"4 records cannot fill train/val/test at 0.7/0.15/0.15 with the hash split \(it gives train 4, val 0, test 0; "
     r"val and test would be empty\); add records, change split.salt"),
    (lambda: records(2) + records(1, start=5), SplitFractions(kind="stratified"), None),
])
def test_every_split_is_non_empty_or_says_why(make, cfg, message):
    if message is None:  # three records, one per split, is possible and must be made
        assert set(assign_splits(make(), cfg, 0).values()) == set(SPLITS)
        return
    with pytest.raises(UserFacingError, match=message):
        assign_splits(make(), cfg, 0)


def test_small_sets_still_fill_every_split():
    for n in range(3, 12):
        assert set(assign_splits(records(n), SplitFractions(kind="random"), 0).values()) == set(SPLITS)


@pytest.mark.parametrize("kind", ["kfold", "stratified_kfold"])
def test_kfold_plans_partition_everything_outside_the_test_split(kind):
    data = records(230)
    plan = assign_folds(data, SplitFractions(kind=kind, folds=5), seed=0, grouped=False)
    rest = {r.record_id for r in data} - set(plan.test)
    assert abs(len(plan.test) - 230 * 0.15) <= 0.5 and len(plan.folds) == 5
    assert sorted(i for _, val in plan.folds for i in val) == sorted(rest), "each record is validated in exactly one fold"
    for train, val in plan.folds:
        assert set(train) | set(val) == rest and not set(train) & set(val)
    if kind == "stratified_kfold":
        label = {r.record_id: r.label for r in data}
        for _, val in plan.folds:
            counts = Counter(label[i] for i in val)
            assert max(counts.values()) - min(counts.values()) <= 1


def test_group_kfold_keeps_groups_whole_in_test_and_folds():
    data = records(200, groups=5)
    plan = assign_folds(data, SplitFractions(kind="stratified_kfold", folds=4), seed=1, grouped=True)
    group = {r.record_id: r.group for r in data}
    places = defaultdict(set)
    for record_id in plan.test:
        places[group[record_id]].add("test")
    for k, (_, val) in enumerate(plan.folds):
        for record_id in val:
            places[group[record_id]].add(k)
    assert all(len(p) == 1 for p in places.values()) and len(places) == 40


def test_too_few_records_for_the_folds_is_one_sentence():
    with pytest.raises(UserFacingError, match=r"5 folds need at least 5 records outside the test split, but only 4"):
        assign_folds(records(5), SplitFractions(kind="kfold", folds=5), seed=0, grouped=False)


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits") / "digits"
    write_digit_imagefolder(root, 130, size=8)
    return root


def _ingest(tmp_path, name, seed, split, digits_dir):
    dataset = LocalArtifact(str(tmp_path / name / "dataset"))
    config = {"dataset_dir": str(digits_dir), "resolution": 8, "label_column": "label", "max_records": 120, "split": split}
    ingest_split(config, seed, dataset, LocalArtifact(str(tmp_path / name / "report.md")), task="text_to_image")
    return {f: hashlib.sha256((tmp_path / name / "dataset" / f).read_bytes()).hexdigest()
            for f in ("manifest.jsonl", "folds.json") if (tmp_path / name / "dataset" / f).exists()}


@pytest.mark.parametrize("split", [{"kind": "stratified"}, {"kind": "stratified_kfold", "folds": 3}])
def test_same_inputs_and_seed_give_a_byte_identical_manifest(tmp_path, small_digits, split):
    first = _ingest(tmp_path, "a", 0, split, small_digits)
    assert first == _ingest(tmp_path, "b", 0, split, small_digits)
    assert first["manifest.jsonl"] != _ingest(tmp_path, "c", 1, split, small_digits)["manifest.jsonl"]
    if split["kind"] == "stratified":
        with pytest.raises(UserFacingError, match="ingest writes it only with ingest.split.kind: kfold"):
            read_folds(tmp_path / "a" / "dataset")
    if split["kind"] == "stratified_kfold":
        folds = read_folds(tmp_path / "a" / "dataset")
        manifest = [json.loads(line) for line in (tmp_path / "a" / "dataset" / "manifest.jsonl").read_text().splitlines()]
        assert folds["num_folds"] == 3 and len(folds["folds"]) == 3
        assert sorted(e["id"] for e in manifest if e["split"] == "val") == folds["folds"][0]["val"]
        assert sorted(e["id"] for e in manifest if e["split"] == "test") == folds["test"]


def test_auto_split_stratifies_labelled_data_and_randomises_the_rest():
    labelled = records(100)
    unlabelled = [IngestRecord(record_id=r.record_id, sha256=r.sha256) for r in labelled]
    per_class = Counter((r.label, s) for r, s in zip(labelled, (assign_splits(labelled, SplitFractions(), 0)[r.record_id]
                                                                 for r in labelled)))
    assert all(abs(per_class[c, "test"] - 1.5) <= 1 for c in range(10))
    assert Counter(assign_splits(unlabelled, SplitFractions(), 0).values()) == {"train": 70, "val": 15, "test": 15}
    assert np.isclose(sum(SplitFractions().model_dump()[s] for s in SPLITS), 1.0)
