"""scikit-learn's bundled datasets as CandidateRecords (no download): digits as 8x8 images, the rest as tables."""

from __future__ import annotations

import numpy as np

from trainflow.data.checks.record_validation import CandidateRecord
from trainflow.data.sources.candidates import SourceCandidates


def sklearn_candidates(name: str, with_masks: bool = False) -> SourceCandidates:
    """Records of `load_<name>()`; `with_masks` gives digits masks whose strokes carry the digit's class."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        images = (bunch.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
        candidates = []
        for index, (image, label) in enumerate(zip(images, bunch.target)):
            # Segmentation: the digit's strokes carry the digit's class (1..10); background is 0.
            mask = np.where(image >= 128, int(label) + 1, 0).astype(np.uint8) if with_masks else None
            where = f"digits/{index:05d}"
            candidates.append(CandidateRecord(source=f"sklearn digits[{index}]", ref=where, default_id=where, image_array=image,
                                              mask_array=mask, label=int(label), caption=f"a handwritten digit {int(label)}"))
        class_names = [str(d) for d in range(10)]
        if with_masks:  # the classes are then those of the mask's pixels
            class_names = ["background"] + [f"digit {d}" for d in range(10)]
        return SourceCandidates(candidates, "image", class_names=class_names)
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
        return SourceCandidates(candidates, "table", target_names=["disease_progression"], feature_names=feature_names)
    return SourceCandidates(candidates, "table", class_names=[str(n) for n in bunch.target_names], feature_names=feature_names)
