"""Small ingest_split Dataset artifacts written straight from scikit-learn's digits (real scans, no model).

The cache and loader tests need an ingest output, not the ingest stage: writing
the documented layout (trainflow.data.manifest) directly keeps them independent
of ingest's own changes and fast.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SPLIT_CYCLE = ("train", "train", "train", "val", "test")


def write_digits_artifact(folder: Path, count: int = 100, size: int = 16, task: str = "classification",
                          first: int = 0) -> Path:
    """An image Dataset artifact of `count` digits (records first..first+count) upscaled to size×size RGB.

    task "segmentation" adds a mask per image (class 1 where the stroke is bright).
    Splits cycle train, train, train, val, test.
    """
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(first, first + count):
        split = SPLIT_CYCLE[number % len(SPLIT_CYCLE)]
        pixels = (digits.images[number % len(digits.images)] / 16 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB")
        relative = f"images/{split}/{number}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relative)
        row = {"id": f"digit-{number:05d}", "split": split, "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
               "image": relative, "label": int(digits.target[number % len(digits.target)])}
        if task == "segmentation":
            mask_relative = f"masks/{split}/{number}.png"
            (folder / mask_relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.asarray(image)[..., 0] > 100).astype(np.uint8)).save(folder / mask_relative)
            row["mask"] = mask_relative
            row.pop("label")
        rows.append(row)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    classes = ["background", "stroke"] if task == "segmentation" else [str(d) for d in range(10)]
    (folder / "dataset.json").write_text(json.dumps(
        {"task": task, "kind": "image", "class_names": classes, "target_names": [], "resolution": size}), encoding="utf-8")
    return folder


def write_table_artifact(folder: Path, count: int = 90) -> Path:
    """A regression table artifact: digits' 64 pixel features, target = the digit plus a large offset."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(count):
        features = digits.data[number].astype(float).tolist()
        rows.append({"id": f"row-{number:05d}", "split": SPLIT_CYCLE[number % len(SPLIT_CYCLE)],
                     "sha256": hashlib.sha256(json.dumps(features).encode()).hexdigest(),
                     "features": features, "targets": [1000.0 + float(digits.target[number]), float(number % 7)]})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(
        {"task": "regression", "kind": "table", "class_names": [], "target_names": ["digit", "mod7"],
         "feature_names": [f"pixel{i}" for i in range(64)]}), encoding="utf-8")
    return folder
