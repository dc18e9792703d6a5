"""scikit-learn's bundled datasets as CandidateRecords (no download): digits as 8x8 images, the rest as tables."""

from __future__ import annotations

import dataclasses

import numpy as np

from trainflow.data.checks.record_validation import CandidateRecord


@dataclasses.dataclass
class SklearnCandidates:
    candidates: list[CandidateRecord]
    kind: str  # "image" or "table"
    class_names: list[str] | None
    target_names: list[str] | None
    feature_names: list[str] | None


def sklearn_candidates(name: str, task: str) -> SklearnCandidates:
    """Records of `load_<name>()`; for segmentation, digits get masks whose strokes carry the digit's class."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        images = (bunch.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
        candidates = []
        for index, (image, label) in enumerate(zip(images, bunch.target)):
            # Segmentation: the digit's strokes carry the digit's class (1..10); background is 0.
            mask = np.where(image >= 128, int(label) + 1, 0).astype(np.uint8) if task == "segmentation" else None
            where = f"digits/{index:05d}"
            candidates.append(CandidateRecord(source=f"sklearn digits[{index}]", ref=where, default_id=where, image_array=image,
                                              mask_array=mask, label=int(label), caption=f"a handwritten digit {int(label)}"))
        class_names = [str(d) for d in range(10)]
        if task == "segmentation":
            class_names = ["background"] + [f"digit {d}" for d in range(10)]
        return SklearnCandidates(candidates, "image", class_names, None, None)
    features = np.asarray(bunch.data, dtype=np.float64)
    feature_names = [str(n) for n in bunch.feature_names]
    is_regression = name == "diabetes"
    candidates = [
        CandidateRecord(source=f"sklearn {name}[{index}]", ref=f"{name}/{index:05d}", default_id=f"{name}/{index:05d}",
                        features=row, targets=[float(target)] if is_regression else None,
                        label=None if is_regression else int(target))
        for index, (row, target) in enumerate(zip(features, bunch.target))
    ]
    if is_regression:
        return SklearnCandidates(candidates, "table", None, ["disease_progression"], feature_names)
    return SklearnCandidates(candidates, "table", [str(n) for n in bunch.target_names], None, feature_names)
