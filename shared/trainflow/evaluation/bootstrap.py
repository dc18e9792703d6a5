"""Seeded bootstrap confidence intervals, and paired bootstrap comparison of two models.

A record (a test example; an image for segmentation) is the unit of resampling.
Resamples are drawn with replacement by `numpy.random.default_rng(seed)`, all at
once as a (resamples, N) index matrix, so the same inputs and seed give the same
intervals, and a paired comparison uses the very same resamples for both models.

`metric_fn` is called as `metric_fn(**arrays)`; bind the other arguments with
`functools.partial`, e.g. `partial(classification_metrics, class_names=names)`.
For trainflow's own metric functions (bound that way) the resamples are scored
all at once from per-record sufficient statistics (confusion-matrix cells, bin
sums, weighted errors, rank groups); any other callable is recomputed once per
resample, which is exact but slower. Both give the same numbers for the same seed.
Memory: the (resamples, N) int64 index matrix, plus counts scored in blocks of
COUNTS_BLOCK_SIZE cells (8 MB of indices per 1,000 resamples of 1,000 records).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.metrics.classification_metrics import classification_metrics, resampled_classification_metrics
from trainflow.metrics.metric_directions import is_lower_better
from trainflow.metrics.regression_metrics import regression_metrics, resampled_regression_metrics
from trainflow.metrics.segmentation_metrics import resampled_segmentation_metrics, segmentation_metrics

MetricFn = Callable[..., dict[str, Any]]

_RESAMPLED_FORMS = {
    classification_metrics: resampled_classification_metrics,
    regression_metrics: resampled_regression_metrics,
    segmentation_metrics: resampled_segmentation_metrics,
}

# A resample where a metric is undefined (e.g. R² of a constant target) is dropped;
# past this share the interval would describe a different population, so we refuse.
MAX_UNDEFINED_SHARE = 0.05
COUNTS_BLOCK_SIZE = 4_000_000  # resample x record cells scored at once (32 MB of float64 counts)


def resample_indices(records: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, records) record indices drawn with replacement from a seeded Generator."""
    return np.random.default_rng(seed).integers(0, records, size=(n_resamples, records))


def bootstrap_intervals(
    metric_fn: MetricFn,
    arrays: dict[str, torch.Tensor],
    keys: list[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the metrics `keys` of `metric_fn(**arrays)`.

    Inputs: `arrays`, tensors whose first dimension indexes the same N records
    (e.g. {"probabilities": (N, C), "labels": (N,)}); `keys`, scalar keys of the
    metric dict (e.g. ["accuracy", "f1_macro"]).
    Output: {key: (low, high)}, the (1 - confidence)/2 and (1 + confidence)/2
    percentiles (numpy's linear interpolation) over the resamples.
    Raises UserFacingError when the arrays disagree on N, a key is not a scalar
    metric on the full data, or a key is undefined in more than 5 % of resamples.
    """
    records = _check_arrays(arrays, "arrays")
    _check_settings(n_resamples, confidence)
    full = metric_fn(**arrays)
    _check_keys(full, keys)
    indices = resample_indices(records, n_resamples, seed)
    values = _resampled_values(metric_fn, arrays, keys, indices)
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for key in keys:
        defined = _defined(values[key], key)
        low, high = np.percentile(defined, [tail, 100 - tail])
        intervals[key] = (float(low), float(high))
    return intervals


def paired_bootstrap(
    metric_fn: MetricFn,
    arrays_a: dict[str, torch.Tensor],
    arrays_b: dict[str, torch.Tensor],
    key: str,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare models a and b on the same N records with the same resamples.

    Inputs: `arrays_a`, `arrays_b`, the metric inputs of each model on the same
    records in the same order (e.g. each model's probabilities, the shared labels);
    `key`, the metric to compare, whose direction comes from metric_directions.
    Output: `difference` (a - b on the full set), `low`, `high` (percentile
    interval of the per-resample differences), `p_better` (share of resamples in
    which a is strictly better than b), plus `a`, `b`, `key`, `lower_is_better`,
    `n_resamples` (resamples where both are defined), `confidence`, `seed`.
    Raises UserFacingError when the two sets differ in N, the key is unknown to
    the direction table or not a scalar metric, or is undefined too often.
    """
    lower_is_better = is_lower_better(key)
    records = _check_arrays(arrays_a, "arrays_a")
    if _check_arrays(arrays_b, "arrays_b") != records:
        raise UserFacingError(f"paired bootstrap needs both models scored on the same records; got {records} and {_check_arrays(arrays_b, 'arrays_b')}")
    _check_settings(n_resamples, confidence)
    full_a, full_b = metric_fn(**arrays_a), metric_fn(**arrays_b)
    _check_keys(full_a, [key])
    _check_keys(full_b, [key])
    indices = resample_indices(records, n_resamples, seed)
    values_a = _resampled_values(metric_fn, arrays_a, [key], indices)[key]
    values_b = _resampled_values(metric_fn, arrays_b, [key], indices)[key]
    differences = _defined(values_a - values_b, key)
    both = ~np.isnan(values_a - values_b)
    better = values_a[both] < values_b[both] if lower_is_better else values_a[both] > values_b[both]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return {
        "key": key,
        "a": float(full_a[key]),
        "b": float(full_b[key]),
        "difference": float(full_a[key] - full_b[key]),
        "low": float(low),
        "high": float(high),
        "p_better": float(better.mean()),
        "lower_is_better": lower_is_better,
        "n_resamples": int(both.sum()),
        "confidence": confidence,
        "seed": seed,
    }


def _resampled_values(metric_fn: MetricFn, arrays: dict[str, torch.Tensor], keys: list[str], indices: np.ndarray) -> dict[str, np.ndarray]:
    """{key: (n_resamples,)} metric values, NaN where a resample leaves the metric undefined."""
    resampled_form = _resampled_form(metric_fn)
    if resampled_form is not None:
        records = indices.shape[1]
        parts = []
        for block in np.array_split(indices, max(1, indices.size // COUNTS_BLOCK_SIZE)):  # bounds memory for large N
            offsets = np.arange(block.shape[0])[:, None] * records
            counts = np.bincount((block + offsets).ravel(), minlength=block.size).reshape(block.shape)
            parts.append(resampled_form(**arrays, counts=torch.from_numpy(counts).to(torch.float64), keys=keys))
        if set(parts[0]) == set(keys):
            return {key: torch.cat([part[key] for part in parts]).numpy() for key in keys}
    # Any other metric function: recompute it on each resample.
    values = {key: np.full(indices.shape[0], np.nan) for key in keys}
    for row, chosen in enumerate(indices):
        chosen = torch.from_numpy(chosen)
        metrics = metric_fn(**{name: tensor[chosen] for name, tensor in arrays.items()})
        for key in keys:
            if isinstance(metrics.get(key), (int, float)):
                values[key][row] = metrics[key]
    return values


def _resampled_form(metric_fn: MetricFn) -> Callable[..., dict[str, torch.Tensor]] | None:
    """The all-resamples-at-once form of a trainflow metric function, with the same bound keyword arguments."""
    bound: dict[str, Any] = {}
    if isinstance(metric_fn, functools.partial):
        if metric_fn.args:
            return None
        metric_fn, bound = metric_fn.func, dict(metric_fn.keywords)
    form = _RESAMPLED_FORMS.get(metric_fn)
    return functools.partial(form, **bound) if form is not None else None


def _defined(values: np.ndarray, key: str) -> np.ndarray:
    defined = values[~np.isnan(values)]
    undefined = values.size - defined.size
    if undefined > MAX_UNDEFINED_SHARE * values.size:
        raise UserFacingError(
            f"{key} is undefined in {undefined} of {values.size} bootstrap resamples (too few records of some class or value), "
            "so its interval would be misleading; evaluate on more records or drop it from the bootstrap keys"
        )
    return defined


def _check_arrays(arrays: dict[str, torch.Tensor], what: str) -> int:
    if not arrays or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in arrays.values()):
        raise UserFacingError(f"bootstrap {what} must be a non-empty dict of tensors indexed by record along dimension 0")
    sizes = {name: t.shape[0] for name, t in arrays.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise UserFacingError(f"bootstrap {what} must all have the same non-zero number of records along dimension 0; got {sizes}")
    return next(iter(sizes.values()))


def _check_settings(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise UserFacingError(f"bootstrap n_resamples must be a positive integer; got {n_resamples}")
    if not 0 < confidence < 1:
        raise UserFacingError(f"bootstrap confidence must be between 0 and 1 (e.g. 0.95); got {confidence}")


def _check_keys(full: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        value = full.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            reason = (full.get("skipped") or {}).get(key)
            available = ", ".join(k for k, v in full.items() if isinstance(v, float))
            raise UserFacingError(
                f"cannot bootstrap '{key}': " + (reason if reason else f"it is not a scalar metric here; choose from {available}")
            )
