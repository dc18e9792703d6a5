import json
import shutil

import pytest

from trainflow.artifacts import LocalArtifact
from trainflow.data.manifest import read_manifest
from trainflow.errors import UserFacingError
from trainflow.stages.ingest_split import ingest_split


def make_bad_dataset(tmp_path, digits_dir):
    """40 good records plus a corrupt image and a caption whose path escapes the root."""
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    lines = [json.loads(l) for l in (digits_dir / "metadata.jsonl").read_text().splitlines()[:40]]
    for row in lines:
        shutil.copy(digits_dir / row["file_name"], root / row["file_name"])
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "outside.png").write_bytes((digits_dir / lines[0]["file_name"]).read_bytes())
    lines.append({"file_name": "images/corrupt.png", "text": "a handwritten digit one", "label": 1})
    lines.append({"file_name": "../outside.png", "text": "a handwritten digit two", "label": 2})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    return root


def run_ingest(tmp_path, root, **config):
    dataset = LocalArtifact(str(tmp_path / "out" / "dataset"))
    report = LocalArtifact(str(tmp_path / "out" / "report.md"))
    summary = ingest_split({"dataset_dir": str(root), "resolution": 32, "label_column": "label", **config}, 0, dataset, report, task="text_to_image")
    return summary, dataset, report


def test_corrupt_image_and_escaping_path_are_reported_and_the_run_continues(tmp_path, digits_dir):
    root = make_bad_dataset(tmp_path, digits_dir)
    summary, dataset, report = run_ingest(tmp_path, root)
    assert summary["num_records"] == 40
    assert summary["num_rejected"] == 2
    rejected = {r["ref"]: r["reason"] for r in map(json.loads, (tmp_path / "out/dataset/rejected.jsonl").read_text().splitlines())}
    assert "does not decode" in rejected["images/corrupt.png"]
    assert "climbs out of the dataset root" in rejected["../outside.png"]
    markdown = (tmp_path / "out/report.md").read_text()
    assert "corrupt.png" in markdown and "outside.png" in markdown
    assert all(e.record_id != "../outside.png" for e in read_manifest(dataset.path))


def test_split_is_seeded_stratified_and_hashed(tmp_path, digits_dir):
    first, dataset, _ = run_ingest(tmp_path / "a", digits_dir, max_records=200)
    second, _, _ = run_ingest(tmp_path / "b", digits_dir, max_records=200)
    assert first["content_sha256"] == second["content_sha256"]
    assert (first["num_train"], first["num_val"], first["num_test"]) == (140, 30, 30)
    splits = [(e.record_id, e.split) for e in read_manifest(dataset.path)]
    assert splits == [(e.record_id, e.split) for e in read_manifest(tmp_path / "b/out/dataset")]
    test_labels = {e.label for e in read_manifest(dataset.path, "test")}
    assert len(test_labels) == 10, "stratification keeps every digit in the test split"


def test_missing_dataset_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserFacingError, match="does not exist; set ingest.dataset_dir"):
        run_ingest(tmp_path, tmp_path / "missing")


def test_split_folder_layout_with_captions_json_keeps_its_splits(tmp_path, digits_dir):
    root = tmp_path / "seed-layout"
    names = sorted((digits_dir / "images").iterdir())[:12]
    for index, split in enumerate(["train", "val", "test"]):
        (root / split / "images").mkdir(parents=True)
        captions = {}
        for image in names[index * 4 : index * 4 + 4]:
            shutil.copy(image, root / split / "images" / image.name)
            captions[image.name] = f"a digit image {image.stem}"
        (root / split / "captions.json").write_text(json.dumps(captions))
    summary, dataset, _ = run_ingest(tmp_path, root, label_column=None)
    assert (summary["num_train"], summary["num_val"], summary["num_test"]) == (4, 4, 4)
    assert all(e.record_id.startswith(f"{e.split}/") for e in read_manifest(dataset.path))
