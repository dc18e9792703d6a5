"""Two models on the same test records: the paired bootstrap, read as "how much better is a than b"."""

from __future__ import annotations

from typing import Any, Callable

import torch

from trainflow.evaluation.bootstrap import paired_bootstrap


def compare_arrays(
    metric_fn: Callable[..., dict[str, Any]], arrays_a: dict[str, torch.Tensor], arrays_b: dict[str, torch.Tensor],
    key: str, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, names: tuple[str, str] = ("a", "b"),
) -> dict[str, Any]:
    """paired_bootstrap's result plus the improvement of a over b in the metric's own direction.

    Inputs: the metric function and each model's metric inputs on the same records in
    the same order; `key`, a scalar metric of `metric_fn` known to metric_directions.
    Output: paired_bootstrap's keys (a, b, difference = a - b, low, high, p_better, ...)
    and `improvement`, `improvement_low`, `improvement_high` (b - a for lower-is-better
    metrics, else a - b, so > 0 always means a is better) and `verdict`, one sentence naming
    the models by `names`.
    Raises UserFacingError (from paired_bootstrap) on mismatched records or an unknown key.
    """
    result = paired_bootstrap(metric_fn, arrays_a, arrays_b, key, n_resamples=n_resamples, seed=seed,
                              confidence=confidence)
    sign = -1.0 if result["lower_is_better"] else 1.0
    low, high = sorted((sign * result["low"], sign * result["high"]))
    result.update(improvement=sign * result["difference"], improvement_low=low, improvement_high=high)
    result["verdict"] = _verdict(result, *names)
    return result


def _verdict(result: dict[str, Any], a: str, b: str) -> str:
    percent = f"{result['confidence']:.0%}"
    if result["improvement_low"] > 0:
        return f"{a} is better than {b} with {percent} confidence"
    if result["improvement_high"] < 0:
        return f"{b} is better than {a} with {percent} confidence"
    return f"no difference at {percent} confidence (the interval contains 0)"
