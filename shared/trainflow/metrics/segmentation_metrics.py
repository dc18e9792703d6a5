"""Semantic-segmentation metrics from one dataset-wide pixel confusion matrix.

IoU and Dice per class are computed from the confusion matrix summed over all
images (every pixel counts once), not as a mean of per-image scores: a class
that covers a few pixels of one image cannot swing the result, and the numbers
equal scikit-learn's jaccard_score / f1_score on the flattened pixels.

A class absent from both the predictions and the masks has no IoU or Dice (0/0):
it is listed under `skipped` and left out of `mean_iou` and `mean_dice`. A class
present in either gets a real score, 0 when it is entirely missed or hallucinated.
Pixels whose mask value is `ignore_index` are left out of everything.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from trainflow.errors import UserFacingError


def check_segmentation_inputs(predicted: torch.Tensor, masks: torch.Tensor, class_names: list[str], ignore_index: int | None) -> None:
    """Raise UserFacingError (naming the input) on wrong shapes, dtypes or class indices."""
    for what, tensor in (("predicted", predicted), ("masks", masks)):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3 or tensor.dtype != torch.int64:
            raise UserFacingError(f"segmentation {what} must be an int64 tensor of shape (images, height, width)")
    if predicted.shape != masks.shape or predicted.shape[0] == 0:
        raise UserFacingError(f"segmentation predicted {tuple(predicted.shape)} and masks {tuple(masks.shape)} must have the same non-empty shape")
    classes = len(class_names)
    if classes < 2 or len(set(class_names)) != classes:
        raise UserFacingError(f"class_names must list at least 2 distinct names; got {class_names}")
    if predicted.min() < 0 or predicted.max() >= classes:
        raise UserFacingError(f"segmentation predicted class indices must lie in 0..{classes - 1}; got {predicted.min().item()}..{predicted.max().item()}")
    valid = masks if ignore_index is None else masks[masks != ignore_index]
    if valid.numel() == 0:
        raise UserFacingError(f"every mask pixel equals ignore_index {ignore_index}, so there is nothing to score")
    if valid.min() < 0 or valid.max() >= classes:
        hint = "" if ignore_index is not None else " (set ignore_index for unlabelled pixels, e.g. 255)"
        raise UserFacingError(f"segmentation mask values must lie in 0..{classes - 1}{hint}; got {valid.min().item()}..{valid.max().item()}")


def segmentation_metrics(predicted: torch.Tensor, masks: torch.Tensor, class_names: list[str], ignore_index: int | None = None) -> dict[str, Any]:
    """IoU and Dice per class and their means, and pixel accuracy.

    Inputs: `predicted` and `masks` (N, H, W) int64 class indices on CPU;
    `class_names`, one per class index; `ignore_index`, a mask value to leave out.
    Output keys: `iou/<name>`, `dice/<name>`, `mean_iou`, `mean_dice`,
    `pixel_accuracy` (share of non-ignored pixels predicted right), `skipped`
    ({name: reason}). See the module docstring for how absent classes are handled.
    Raises UserFacingError on invalid inputs (see `check_segmentation_inputs`).
    """
    check_segmentation_inputs(predicted, masks, class_names, ignore_index)
    confusion = multiclass_confusion_matrix(predicted.reshape(-1), masks.reshape(-1), len(class_names), ignore_index=ignore_index)
    scores = scores_from_pixel_confusion(confusion.to(torch.float64)[None])
    metrics: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for index, name in enumerate(class_names):
        if torch.isnan(scores["iou"][0, index]):
            reason = f"class '{name}' appears in neither the predictions nor the masks, so its IoU and Dice are undefined and left out of the means"
            skipped[f"iou/{name}"] = skipped[f"dice/{name}"] = reason
            continue
        metrics[f"iou/{name}"] = float(scores["iou"][0, index])
        metrics[f"dice/{name}"] = float(scores["dice"][0, index])
    for key in ("mean_iou", "mean_dice", "pixel_accuracy"):
        metrics[key] = float(scores[key][0])
    metrics["skipped"] = skipped
    return metrics


def per_image_confusion(predicted: torch.Tensor, masks: torch.Tensor, classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """(N, C, C) pixel confusion matrix of each image (rows = true class).

    The bootstrap's per-record sufficient statistic: any resample's metrics are
    those of the sum of its images' matrices. One bincount for all images, since
    torchmetrics builds one matrix per call.
    """
    images = predicted.shape[0]
    image_index = torch.arange(images)[:, None, None].expand_as(masks)
    keep = torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    cells = (image_index[keep] * classes + masks[keep]) * classes + predicted[keep]
    return torch.bincount(cells, minlength=images * classes * classes).reshape(images, classes, classes)


def scores_from_pixel_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU, Dice (B, C; NaN for absent classes), their means and pixel accuracy (B,) from (B, C, C) float64 matrices."""
    true_pos = confusion.diagonal(dim1=1, dim2=2)
    union = confusion.sum(dim=1) + confusion.sum(dim=2) - true_pos
    present = union > 0
    iou = torch.where(present, true_pos / union.clamp(min=1), torch.full_like(true_pos, torch.nan))
    dice = torch.where(present, 2 * true_pos / (union + true_pos).clamp(min=1), torch.full_like(true_pos, torch.nan))
    return {
        "iou": iou,
        "dice": dice,
        "mean_iou": iou.nanmean(dim=1),
        "mean_dice": dice.nanmean(dim=1),
        "pixel_accuracy": true_pos.sum(dim=1) / confusion.sum(dim=(1, 2)),
    }


def resampled_segmentation_metrics(
    predicted: torch.Tensor, masks: torch.Tensor, class_names: list[str], counts: torch.Tensor, keys: list[str], ignore_index: int | None = None
) -> dict[str, torch.Tensor]:
    """The scalar metrics in `keys` for B resamples of images, given how often each image is drawn.

    `counts` (B, N) float64. Returns {key: (B,) float64}, NaN where undefined.
    """
    check_segmentation_inputs(predicted, masks, class_names, ignore_index)
    classes = len(class_names)
    cells = per_image_confusion(predicted, masks, classes, ignore_index).reshape(predicted.shape[0], -1).to(torch.float64)
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    for block in counts.split(64):  # bounds memory at 64 x C x C per block for many classes
        scores = scores_from_pixel_confusion((block @ cells).reshape(-1, classes, classes))
        for key in keys:
            family, _, name = key.partition("/")
            if key in scores and scores[key].ndim == 1:
                out[key].append(scores[key])
            elif family in {"iou", "dice"} and name in index:
                out[key].append(scores[family][:, index[name]])
    return {key: torch.cat(parts) for key, parts in out.items() if parts}
