"""Train-split statistics of a cache, computed shard by shard and combined exactly in shard order.

Pixel sums are Python integers (exact at any size); feature and target
moments are combined with Chan et al.'s pairwise update, which stays accurate
when the mean is large compared with the spread. Per-shard facts are plain
JSON, so a resumed build combines the same numbers as a clean one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PIXEL_ROWS_PER_PASS = 256  # widening uint8 pixels to int64 a slice at a time bounds the memory


def _moments(array: np.ndarray) -> dict[str, Any]:
    values = array.astype(np.float64)
    mean = values.mean(axis=0)
    return {"n": len(values), "mean": mean.tolist(), "m2": ((values - mean) ** 2).sum(axis=0).tolist()}


def shard_statistics(columns: dict[str, np.ndarray], num_classes: int) -> dict[str, Any]:
    """Sums and moments of one shard's columns (images, features, targets, class counts)."""
    stats: dict[str, Any] = {}
    if "images" in columns:
        images = columns["images"]
        sums, squares = np.zeros(images.shape[1], np.int64), np.zeros(images.shape[1], np.int64)
        for start in range(0, len(images), PIXEL_ROWS_PER_PASS):
            part = images[start: start + PIXEL_ROWS_PER_PASS].astype(np.int64)
            sums += part.sum(axis=(0, 2, 3))
            squares += (part * part).sum(axis=(0, 2, 3))
        stats["pixels"] = {"n": int(images.shape[0] * images.shape[2] * images.shape[3]),
                           "sum": [int(v) for v in sums], "sum_sq": [int(v) for v in squares]}
    if "features" in columns:
        stats["features"] = _moments(columns["features"])
    if "targets" in columns:
        stats["targets"] = _moments(columns["targets"])
    if "masks" in columns:
        stats["class_counts"] = np.bincount(columns["masks"].ravel(), minlength=num_classes).tolist()
    elif num_classes:
        labels = columns["labels"]
        stats["class_counts"] = np.bincount(labels[labels >= 0], minlength=num_classes).tolist()
    return stats


def _combine_moments(parts: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    n, mean, m2 = 0, None, None
    for part in parts:
        if part["n"] == 0:
            continue
        other_mean, other_m2 = np.array(part["mean"]), np.array(part["m2"])
        if mean is None:
            n, mean, m2 = part["n"], other_mean, other_m2
            continue
        total = n + part["n"]
        delta = other_mean - mean
        mean = mean + delta * part["n"] / total
        m2 = m2 + other_m2 + delta ** 2 * n * part["n"] / total
        n = total
    std = np.sqrt(m2 / n) + 1e-6
    return mean.tolist(), std.tolist()


def combine_shard_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """input_mean/std (pixels in [0, 1] per channel, or feature columns), target_mean/std, class_counts."""
    stats: dict[str, Any] = {}
    if "pixels" in parts[0]:
        n = sum(p["pixels"]["n"] for p in parts)
        sums = [sum(p["pixels"]["sum"][c] for p in parts) for c in range(len(parts[0]["pixels"]["sum"]))]
        squares = [sum(p["pixels"]["sum_sq"][c] for p in parts) for c in range(len(sums))]
        stats["input_mean"] = [s / n / 255.0 for s in sums]
        stats["input_std"] = [math.sqrt(max(n * q - s * s, 0) / (n * n)) / 255.0 + 1e-6 for s, q in zip(sums, squares)]
    else:
        stats["input_mean"], stats["input_std"] = _combine_moments([p["features"] for p in parts])
    if "targets" in parts[0]:
        stats["target_mean"], stats["target_std"] = _combine_moments([p["targets"] for p in parts])
    if "class_counts" in parts[0]:
        width = max(len(p["class_counts"]) for p in parts)  # a shard may hold no record of the last classes
        padded = [p["class_counts"] + [0] * (width - len(p["class_counts"])) for p in parts]
        stats["class_counts"] = [sum(values) for values in zip(*padded)]
    return stats
