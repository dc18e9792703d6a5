"""Every source behind read_source: image folders, split folders, CSV/JSONL/Parquet tables, HDF5, scikit-learn."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from broken_corpus import digit_image, write_digit_imagefolder
from trainflow.artifacts import LocalArtifact
from trainflow.config import IngestConfig, parse_section
from trainflow.data.manifest import read_dataset_info, read_manifest
from trainflow.data.sources.read_source import read_source
from trainflow.errors import ConfigError, UserFacingError
from trainflow.stages.ingest_split import ingest_split


def needs(task: str):
    """What task `task` needs of a record (its definition in trainflow.tasks)."""
    from trainflow.tasks import get_task

    return get_task(task).record_needs


def run_stage(tmp_path, config, task):
    dataset = LocalArtifact(str(tmp_path / "out" / "dataset"))
    summary = ingest_split(config, 0, dataset, LocalArtifact(str(tmp_path / "out" / "report.md")), task=task)
    return summary, dataset.path


def test_imagefolder_with_label_and_numeric_target_columns(tmp_path):
    write_digit_imagefolder(tmp_path / "f", 8, extra=lambda i: {"size": i * 1.5, "ink": i})
    data = read_source(IngestConfig(dataset_dir=str(tmp_path / "f"), label_column="label", target_columns=["size", "ink"]), needs("regression"))
    assert [r.targets for r in data.records][:3] == [(0.0, 0.0), (1.5, 1.0), (3.0, 2.0)]
    assert data.target_names == ["size", "ink"] and data.kind == "image"


def test_imagefolder_segmentation_masks_keep_their_class_ids(tmp_path):
    root = tmp_path / "seg"
    (root / "masks").mkdir(parents=True)
    ids = (np.arange(16 * 16).reshape(16, 16) // 86).astype(np.uint8)  # classes 0, 1, 2 in bands
    write_digit_imagefolder(root, 6, extra=lambda i: {"mask": f"masks/{i}.png"})
    for index in range(6):
        Image.fromarray(ids, mode="L").save(root / "masks" / f"{index}.png")
    summary, out = run_stage(tmp_path, {"dataset_dir": str(root), "mask_column": "mask", "resolution": 16}, "segmentation")
    assert summary["num_records"] == 6
    entry = read_manifest(out)[0]
    assert np.array_equal(np.asarray(Image.open(f"{out}/{entry.mask}")), ids)
    assert read_dataset_info(out)["class_names"] == ["0", "1", "2"], "class names default to 0..largest mask id"


def test_split_folders_with_captions_json_as_a_list_with_labels(tmp_path):
    root = tmp_path / "layout"
    for split, start in (("train", 0), ("val", 4), ("test", 8)):
        (root / split / "images").mkdir(parents=True)
        items = []
        for index in range(start, start + 4):
            digit_image(index).save(root / split / "images" / f"{index}.png")
            items.append({"file_name": f"{index}.png", "text": f"digit {index}", "label": index % 3})
        (root / split / "captions.json").write_text(json.dumps(items))
    data = read_source(IngestConfig(dataset_dir=str(root), label_column="label"), needs("text_to_image"))
    assert [(r.record_id, r.layout_split, r.label) for r in data.records][:2] == [("test/images/10.png", "test", 1),
                                                                                   ("test/images/11.png", "test", 2)]
    assert len(data.records) == 12


def _write_table(path, rows, fmt):
    if fmt == "csv":
        columns = list(rows[0])
        path.write_text(",".join(columns) + "\n" + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_image_table_resolves_paths_against_its_folder(tmp_path, fmt):
    root = tmp_path / "table"
    (root / "pics").mkdir(parents=True)
    rows = []
    for index in range(6):
        digit_image(index).save(root / "pics" / f"{index}.png")
        rows.append({"file_name": f"pics/{index}.png", "text": f"digit {index}", "label": ["cat", "dog"][index % 2],
                     "score": index / 2})
    rows.append({"file_name": "../escape.png", "text": "x", "label": "cat", "score": 1.0})
    _write_table(root / f"rows.{fmt}", rows, fmt)
    cfg = IngestConfig(table=str(root / f"rows.{fmt}"), label_column="label", target_columns=["score"])
    data = read_source(cfg, needs("classification"))
    assert data.kind == "image" and data.class_names == ["cat", "dog"]
    assert [(r.record_id, r.label, r.caption, r.targets) for r in data.records][:2] == [
        ("pics/0.png", 0, "digit 0", (0.0,)), ("pics/1.png", 1, "digit 1", (0.5,))]
    (escape,) = data.rejected
    assert escape.rule == "path_outside_root" and escape.ref == "../escape.png"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_feature_table_through_the_stage(tmp_path, fmt):
    rows = [{"a": i * 0.5, "b": (i * 7) % 5, "note": f"row {i}", "y": i * 2.0} for i in range(20)]
    _write_table(tmp_path / f"features.{fmt}", rows, fmt)
    summary, out = run_stage(tmp_path, {"table": str(tmp_path / f"features.{fmt}"), "target_columns": ["y"]}, "regression")
    assert summary["num_records"] == 20 and summary["kind"] == "table"
    info = read_dataset_info(out)
    assert info["feature_names"] == ["a", "b"] and info["target_names"] == ["y"]
    assert sorted(e.features for e in read_manifest(out))[1] == [0.5, 2.0]


def test_table_format_can_be_named_when_the_suffix_does_not_say(tmp_path):
    (tmp_path / "data.txt").write_text("x,label\n1,a\n2,b\n3,a\n")
    data = read_source(IngestConfig(table=str(tmp_path / "data.txt"), table_format="csv", label_column="label"), needs("classification"))
    assert [r.label for r in data.records] == [0, 1, 0]


def test_numeric_class_names_sort_as_numbers(tmp_path):
    (tmp_path / "t.csv").write_text("x,label\n" + "".join(f"{i},{i % 12}\n" for i in range(24)))
    data = read_source(IngestConfig(table=str(tmp_path / "t.csv"), label_column="label"), needs("classification"))
    assert data.class_names == [str(i) for i in range(12)]
    assert [r.label for r in data.records if r.features == (11.0,)] == [11]


def test_hdf5_images_with_labels_captions_and_ids(tmp_path):
    path = tmp_path / "digits.h5"
    images = np.stack([np.asarray(digit_image(i, size=12, mode="L")) for i in range(10)])
    with h5py.File(path, "w") as handle:
        handle["pixels"] = images
        handle["y"] = np.arange(10) % 4
        handle["text"] = np.array([f"digit {i}".encode() for i in range(10)], dtype=object)
        handle["key"] = np.array([f"img-{i:02d}".encode() for i in range(10)], dtype=object)
    config = {"hdf5": str(path), "image_column": "pixels", "label_column": "y", "caption_column": "text",
              "id_column": "key", "resolution": 12}
    summary, out = run_stage(tmp_path, config, "classification")
    entries = {e.record_id: e for e in read_manifest(out)}
    assert summary["num_records"] == 10 and entries["img-03"].label == 3 and entries["img-03"].caption == "digit 3"
    snapshot = np.asarray(Image.open(f"{out}/{entries['img-03'].image}"))
    assert snapshot.shape == (12, 12, 3) and np.array_equal(snapshot[..., 0], images[3])


def test_hdf5_rgb_images_with_masks(tmp_path):
    path = tmp_path / "seg.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.stack([np.asarray(digit_image(i, size=16)) for i in range(5)])
        handle["masks"] = np.stack([np.full((16, 16), i % 3, np.uint8) for i in range(5)])
    data = read_source(IngestConfig(hdf5=str(path), image_column="images", mask_column="masks"), needs("segmentation"))
    assert len(data.records) == 5 and data.class_names == ["0", "1", "2"]


def test_hdf5_features_and_targets_reject_non_finite_rows(tmp_path):
    path = tmp_path / "table.h5"
    features = np.arange(30, dtype=np.float32).reshape(10, 3)
    features[4, 1] = np.nan
    with h5py.File(path, "w") as handle:
        handle["x"] = features
        handle["t"] = np.arange(10, dtype=np.float64) * 3
    data = read_source(IngestConfig(hdf5=str(path), feature_columns=["x"], target_columns=["t"]), needs("regression"))
    assert data.kind == "table" and data.feature_names == ["x_0", "x_1", "x_2"] and data.target_names == ["t"]
    assert len(data.records) == 9
    (bad,) = data.rejected
    assert bad.ref == "table.h5[4]" and bad.rule == "feature_not_finite"


def test_hdf5_missing_or_misshapen_datasets_are_one_sentence(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.zeros((4, 8, 8), np.uint8)
        handle["labels"] = np.zeros(3, np.int64)
    with pytest.raises(UserFacingError, match="has no dataset 'file_name'; set ingest.image_column"):
        read_source(IngestConfig(hdf5=str(path)), needs("classification"))
    with pytest.raises(UserFacingError, match=r"dataset 'labels' .* has shape \(3,\); it needs 4 rows"):
        read_source(IngestConfig(hdf5=str(path), image_column="images", label_column="labels"), needs("classification"))
    (tmp_path / "not.h5").write_bytes(b"plain text")
    with pytest.raises(UserFacingError, match="is not a readable HDF5 file"):
        read_source(IngestConfig(hdf5=str(tmp_path / "not.h5")), needs("classification"))


@pytest.mark.parametrize("name, task, kept, kind", [
    ("digits", "classification", 1797, "image"), ("iris", "classification", 149, "table"),
    ("wine", "classification", 178, "table"), ("breast_cancer", "classification", 569, "table"),
    ("diabetes", "regression", 442, "table"),
])
def test_sklearn_bundled_sets(name, task, kept, kind):
    data = read_source(IngestConfig(sklearn_dataset=name), needs(task))
    assert (len(data.records), data.kind) == (kept, kind)
    if name == "iris":  # iris holds one exact duplicate row; it counts once
        (duplicate,) = data.rejected
        assert duplicate.rule == "duplicate_content"


@pytest.mark.parametrize("config, message", [
    ({"dataset_dir": "a", "table": "b.csv"}, "set exactly one of dataset_dir"),
    ({"table": "data.xlsx"}, "cannot tell the format of 'data.xlsx'"),
    ({"hdf5": "x.h5", "table_format": "csv"}, "table_format applies to ingest.table only"),
    ({"sklearn_dataset": "iris", "split": {"kind": "group"}}, "split.kind: group needs ingest.group_column"),
    ({"sklearn_dataset": "iris", "split": {"kind": "kfold"}}, "set folds"),
    ({"sklearn_dataset": "iris", "split": {"kind": "random", "salt": "x"}}, "salt and hash_key apply to kind: hash only"),
    ({"sklearn_dataset": "iris", "max_bad_fraction": 1.5}, "max_bad_fraction"),
])
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_section(IngestConfig, config, "the ingest section")


def test_missing_table_column_is_one_sentence(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UserFacingError, match=r"has no column 'label'; its columns are x, y"):
        read_source(IngestConfig(table=str(tmp_path / "t.csv"), label_column="label"), needs("classification"))
