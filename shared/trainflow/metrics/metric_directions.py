"""The one table of which direction is better for every metric trainflow reports.

Gates, early stopping, model comparison and reports all ask `is_lower_better`;
nothing else in trainflow keeps its own list. A name the table does not know
raises instead of being guessed, so a new metric must be added here first.
"""

from __future__ import annotations

from trainflow.errors import UserFacingError

LOWER_IS_BETTER = frozenset({
    "loss", "fid", "kid", "mse", "mae", "rmse", "mape", "log_loss", "ece",
    "lpips",  # distance of a generated image to its reference image
})

HIGHER_IS_BETTER = frozenset({
    "accuracy",
    "f1", "f1_macro", "f1_weighted", "f1_micro",
    "precision", "precision_macro", "precision_weighted", "precision_micro",
    "recall", "recall_macro", "recall_weighted", "recall_micro",
    "roc_auc", "pr_auc", "r2",
    "iou", "dice", "mean_iou", "mean_dice", "pixel_accuracy",
    "clip_score", "prompt_accuracy", "psnr", "ssim",
    "lpips_diversity",  # mean distance between pairs of generated images
})

# Where a number came from (which model, split or checkpoint), not what it measures.
# Stripped repeatedly, so `base_test_loss` and `best_val_loss` resolve to `loss`.
SOURCE_PREFIXES = ("base_", "champion_", "candidate_", "best_", "last_", "train_", "val_", "test_")


def _base_name(name: str) -> str | None:
    """The table entry `name` refers to, or None when it names none."""
    head = name.split("/", 1)[0]  # `f1/<class>`, `mse/<target>`, `iou/<class>`
    while True:
        if head in LOWER_IS_BETTER or head in HIGHER_IS_BETTER:
            return head
        prefix = next((p for p in SOURCE_PREFIXES if head.startswith(p)), None)
        if prefix is None:
            return None
        head = head[len(prefix):]


def is_lower_better(name: str) -> bool:
    """Whether a smaller value of metric `name` means a better model.

    Accepts the bare names in LOWER_IS_BETTER / HIGHER_IS_BETTER, with any of
    SOURCE_PREFIXES in front (`val_loss`, `base_fid`, `test_f1_macro`) and an
    optional `/<class or target>` suffix (`f1/cat`, `rmse/price`).

    Raises UserFacingError naming the metric when the table does not know it:
    a gate or comparison on an unknown metric must not silently pick a direction.
    """
    base = _base_name(name)
    if base is None:
        known = ", ".join(sorted(LOWER_IS_BETTER | HIGHER_IS_BETTER))
        raise UserFacingError(
            f"trainflow does not know whether higher or lower is better for metric '{name}'; "
            f"use one of {known} (optionally prefixed by {', '.join(SOURCE_PREFIXES)} or suffixed by /<class>)"
        )
    return base in LOWER_IS_BETTER
