"""Regression metrics per target and averaged over targets, equal to scikit-learn's.

`regression_metrics` scores the full test split; `resampled_regression_metrics`
scores many bootstrap resamples at once from per-record sufficient statistics.
Averages over targets are uniform, as scikit-learn's `multioutput='uniform_average'`
(so `rmse` is the mean of the per-target RMSEs, not the RMSE of all values).

Undefined numbers are left out with a reason under `skipped`, never filled in:
- R² of a target that is constant (scikit-learn returns 1.0 or 0.0 by convention);
- MAPE of a target with a (near-)zero true value, |y| < 1.17e-6 (the percentage
  error is unbounded; scikit-learn divides by 2.2e-16 instead);
- the mean over targets of a metric that is undefined for any target.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.regression import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error

from trainflow.errors import UserFacingError

MAPE_MIN_ABS_TARGET = 1.17e-6  # torchmetrics clamps |y| here; below it MAPE measures the clamp, not the model
PER_TARGET = ("mse", "mae", "rmse", "r2", "mape")


def check_regression_inputs(predictions: torch.Tensor, targets: torch.Tensor, target_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the inputs and return both as float64 (N, T).

    Raises UserFacingError when shapes differ, are not (records, targets), the
    names do not match the columns, or any value is NaN or infinite.
    """
    for what, tensor in (("predictions", predictions), ("targets", targets)):
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
            raise UserFacingError(f"regression {what} must be a tensor of shape (records, targets)")
        if not torch.isfinite(tensor).all():
            raise UserFacingError(f"regression {what} contain NaN or infinite values")
    if predictions.shape != targets.shape or predictions.shape[0] == 0:
        raise UserFacingError(f"regression predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must have the same non-empty shape")
    if len(target_names) != targets.shape[1] or len(set(target_names)) != len(target_names):
        raise UserFacingError(f"target_names must list {targets.shape[1]} distinct names, one per target column; got {len(target_names)}")
    return predictions.detach().to(torch.float64), targets.detach().to(torch.float64)


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor, target_names: list[str]) -> dict[str, Any]:
    """MSE, MAE, RMSE, R² and MAPE per target and their means over targets.

    Inputs: `predictions` and `targets` (N, T) on CPU; `target_names`, T names.
    Output keys: `mse/<name>`, `mae/<name>`, `rmse/<name>`, `r2/<name>`,
    `mape/<name>` (a fraction, as scikit-learn: 0.1 means 10 %), then `mse`,
    `mae`, `rmse`, `r2`, `mape` (means over targets), and `skipped`
    ({name: reason}, see the module docstring).
    Raises UserFacingError on invalid inputs (see `check_regression_inputs`).
    """
    predictions, targets = check_regression_inputs(predictions, targets, target_names)
    columns = targets.shape[1]
    per_target = {
        "mse": mean_squared_error(predictions, targets, num_outputs=columns).reshape(columns),
        "mae": mean_absolute_error(predictions, targets, num_outputs=columns).reshape(columns),
        "rmse": mean_squared_error(predictions, targets, squared=False, num_outputs=columns).reshape(columns),
        "r2": _r2_per_target(predictions, targets),
        "mape": torch.stack([mean_absolute_percentage_error(predictions[:, t], targets[:, t]) for t in range(columns)]),
    }
    undefined = _undefined_targets(targets, target_names)
    metrics: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for metric, values in per_target.items():
        for index, name in enumerate(target_names):
            reason = undefined.get((metric, index))
            if reason:
                skipped[f"{metric}/{name}"] = reason
            else:
                metrics[f"{metric}/{name}"] = float(values[index])
    for metric, values in per_target.items():
        missing = [name for index, name in enumerate(target_names) if (metric, index) in undefined]
        if missing:
            skipped[metric] = f"{metric} is undefined for target(s) {', '.join(missing)}, so its mean over targets is too"
        else:
            metrics[metric] = float(values.mean())
    metrics["skipped"] = skipped
    return metrics


def _r2_per_target(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Own formula: torchmetrics' r2_score treats any residual or total sum of squares
    # below 1e-4 as zero (R² = 1.0 on small-scale targets); scikit-learn does not.
    residual = ((targets - predictions) ** 2).sum(dim=0)
    total = ((targets - targets.mean(dim=0)) ** 2).sum(dim=0)
    return 1 - residual / total  # inf/NaN for constant targets, which are reported as skipped


def _undefined_targets(targets: torch.Tensor, target_names: list[str]) -> dict[tuple[str, int], str]:
    undefined = {}
    for index, name in enumerate(target_names):
        column = targets[:, index]
        if column.numel() < 2 or bool((column == column[0]).all()):
            undefined[("r2", index)] = f"target '{name}' has the same value in every record, so R² is undefined"
        if bool((column.abs() < MAPE_MIN_ABS_TARGET).any()):
            undefined[("mape", index)] = f"target '{name}' has (near-)zero true values, so its percentage error is unbounded"
    return undefined


def resampled_regression_metrics(
    predictions: torch.Tensor, targets: torch.Tensor, target_names: list[str], counts: torch.Tensor, keys: list[str]
) -> dict[str, torch.Tensor]:
    """The metrics in `keys` for B resamples, given how often each record is drawn.

    `counts` (B, N) float64, counts[b, i] = times record i is in resample b.
    Returns {key: (B,) float64}, NaN where undefined in that resample (R² of a
    resample whose target is constant, and every key undefined on the full set).
    The same formulas as `regression_metrics`, on weighted per-record errors.
    """
    predictions, targets = check_regression_inputs(predictions, targets, target_names)
    records = targets.shape[0]
    error = predictions - targets
    mse = counts @ error**2 / records
    # Centred on the full-data mean, so the weighted total sum of squares keeps its precision.
    centred = targets - targets.mean(dim=0)
    weighted_mean = counts @ centred / records
    total = counts @ centred**2 - records * weighted_mean**2
    r2 = 1 - mse * records / total
    drawn = counts > 0
    for index in range(targets.shape[1]):  # a resample that drew one target value only has no R²
        column = targets[:, index]
        highest = torch.where(drawn, column, torch.full_like(column, -torch.inf)).amax(dim=1)
        lowest = torch.where(drawn, column, torch.full_like(column, torch.inf)).amin(dim=1)
        r2[highest == lowest, index] = torch.nan
    per_target = {
        "mse": mse,
        "mae": counts @ error.abs() / records,
        "rmse": mse.sqrt(),
        "r2": r2,
        "mape": counts @ (error.abs() / targets.abs()) / records,
    }
    for metric, index in _undefined_targets(targets, target_names):
        per_target[metric][:, index] = torch.nan
    out = {}
    for metric, values in per_target.items():
        out[metric] = values.mean(dim=1)  # NaN when any target is undefined, as on the full set
        for index, name in enumerate(target_names):
            out[f"{metric}/{name}"] = values[:, index]
    return {key: value for key, value in out.items() if key in set(keys)}
