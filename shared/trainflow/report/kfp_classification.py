"""A classifier's confusion matrix and ROC curve in KFP's ClassificationMetrics form (the UI draws both)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MAX_ROC_POINTS = 200  # the UI draws a line, and artifact metadata should stay small
# sklearn's first threshold is +inf ("predict nothing positive"); JSON has no infinity, and any value
# above every probability means the same thing.
ABOVE_EVERY_PROBABILITY = float(np.nextafter(1.0, 2.0))


def roc_points(probabilities: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """fpr, tpr, thresholds and what the curve is, by scikit-learn's roc_curve.

    Two classes: the curve of the second (positive) class, as classification_metrics' roc_auc.
    More: the micro-average one-vs-rest curve (every record × class pair as one binary decision);
    note classification_metrics' roc_auc is the macro average, so the two AUCs can differ.
    At most MAX_ROC_POINTS points (evenly picked, ends kept).
    """
    from sklearn.metrics import roc_curve

    scores, truth = probabilities.double().numpy(), labels.numpy()
    if len(class_names) == 2:
        kind = f"positive class '{class_names[1]}'"
        fpr, tpr, thresholds = roc_curve(truth == 1, scores[:, 1])
    else:
        kind = "micro-average one-vs-rest"
        one_hot = np.eye(len(class_names), dtype=bool)[truth]
        fpr, tpr, thresholds = roc_curve(one_hot.ravel(), scores.ravel())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    thresholds = np.where(np.isinf(thresholds), ABOVE_EVERY_PROBABILITY, thresholds)
    return {"kind": kind, "fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": thresholds[keep].tolist()}


def log_classification_metrics(artifact, confusion_matrix: list[list[int]], probabilities: torch.Tensor, labels: torch.Tensor,
                               class_names: list[str]) -> dict[str, Any]:
    """Log the confusion matrix (rows = true class, from classification_metrics) and the ROC curve into
    `artifact` (a KFP ClassificationMetrics or any .metadata holder).

    KFP's own ClassificationMetrics methods write the metadata, so its format is KFP's; an
    artifact without them (LocalArtifact) receives the same metadata. Returns the ROC points.
    """
    from kfp.dsl import ClassificationMetrics

    roc = roc_points(probabilities, labels, class_names)
    target = artifact if hasattr(artifact, "log_confusion_matrix") else ClassificationMetrics(name="classification_metrics")
    target.log_confusion_matrix(list(class_names), [[int(v) for v in row] for row in confusion_matrix])
    target.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    target.metadata["rocCurveKind"] = roc["kind"]
    if target is not artifact:
        artifact.metadata.update(target.metadata)
    return roc
