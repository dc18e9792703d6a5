"""Aspect-ratio buckets: the image sizes a pixel budget allows, and the nearest one for an image.

A bucket is a (width, height) pair of multiples of `step` whose area fits the budget (resolution²) as
closely as a multiple of step allows, with width / height inside [min_aspect_ratio, max_aspect_ratio].
An image goes to the bucket whose aspect ratio is nearest to its own (in log scale, so 2:1 and 1:2 are
equally far from square); it is resized to cover the bucket and the small excess is centre-cropped.
Pure Python: the config check calls it before anything runs.
"""

from __future__ import annotations

import math

# Aspect ratios written in a config are decimals or reciprocals (1 / 0.5625), one rounding away from the
# integer quotient width / height: a bucket exactly at the range's end must not fall out over the last bit.
RATIO_TOLERANCE = 1e-9


def ratio_in_range(width: int, height: int, min_aspect_ratio: float, max_aspect_ratio: float) -> bool:
    """Whether width / height lies in [min_aspect_ratio, max_aspect_ratio], ends included to a 1e-9 relative tolerance."""
    ratio = width / height
    return (min_aspect_ratio * (1 - RATIO_TOLERANCE) <= ratio <= max_aspect_ratio * (1 + RATIO_TOLERANCE))


def bucket_sizes(resolution: int, step: int, min_aspect_ratio: float, max_aspect_ratio: float) -> list[tuple[int, int]]:
    """Every (width, height) bucket, sorted by aspect ratio (tallest first); empty when the settings allow none."""
    budget = resolution * resolution
    sizes = set()
    for side in range(step, budget // step + 1, step):
        other = budget // side // step * step  # the longest multiple of step that keeps the area in budget
        if other >= step:  # both orientations, so the list is symmetric when the ratio range is
            sizes.update(size for size in ((side, other), (other, side))
                         if ratio_in_range(*size, min_aspect_ratio, max_aspect_ratio))
    # Widths that round down to the same height give several buckets of one height: keep the widest per height
    # and the tallest per width, so every bucket uses its budget fully.
    by_height: dict[int, int] = {}
    for width, height in sizes:
        by_height[height] = max(width, by_height.get(height, 0))
    by_width: dict[int, int] = {}
    for height, width in by_height.items():
        by_width[width] = max(height, by_width.get(width, 0))
    return sorted(((w, h) for w, h in by_width.items()), key=lambda size: size[0] / size[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (log scale); a tie goes to the larger area."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda size: (abs(math.log(size[0] / size[1]) - ratio), -size[0] * size[1]))


def outside_range(width: int, height: int, min_aspect_ratio: float, max_aspect_ratio: float) -> bool:
    """Whether the image's aspect ratio lies outside the buckets' range (it is cropped to the nearest end)."""
    return not ratio_in_range(width, height, min_aspect_ratio, max_aspect_ratio)
