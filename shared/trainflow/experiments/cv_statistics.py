"""Across folds: mean, standard deviation, a t-interval, and the corrected resampled t-test for two configurations.

The t-interval treats the K fold scores as a sample (df = K - 1); with overlapping training sets the folds
are not independent, so it is narrower than the truth, which is why comparing two configurations uses
Nadeau and Bengio's corrected resampled t-test (Machine Learning 52, 2003): the variance of the per-fold
differences is inflated by n_test / n_train, t = mean(d) / sqrt((1/k + n_test/n_train) · var(d)), df = k - 1.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats


def fold_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """{mean, std (ddof 1), ci_low, ci_high, folds} of per-fold values; no interval (with why) below two folds."""
    data = np.asarray(values, dtype=np.float64)
    k = len(data)
    out: dict[str, Any] = {"mean": float(data.mean()), "folds": k, "confidence": confidence}
    if k < 2:
        out["interval_skipped"] = "one fold gives no spread"
        return out
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=k - 1)) * std / math.sqrt(k)
    out.update({"std": std, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half})
    return out


def corrected_resampled_ttest(a: Sequence[float], b: Sequence[float], n_train: float, n_test: float) -> dict[str, Any]:
    """Compare per-fold scores a and b (same folds, same order): mean difference a - b, t, df and two-sided p.

    n_train / n_test: the (mean) training and held-out record counts per fold.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    k = len(d)
    if k < 2:
        return {"test": "corrected resampled t-test (Nadeau & Bengio 2003)", "skipped": "needs at least two folds"}
    variance = float(d.var(ddof=1))
    mean = float(d.mean())
    scale = math.sqrt((1.0 / k + n_test / n_train) * variance)
    if scale == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / scale
        p = float(2 * stats.t.sf(abs(t), df=k - 1))
    return {"test": "corrected resampled t-test (Nadeau & Bengio 2003)", "mean_difference": mean, "t": t,
            "df": k - 1, "p_value": p, "folds": k, "n_train": n_train, "n_test": n_test}
