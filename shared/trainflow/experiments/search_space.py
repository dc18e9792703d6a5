"""The `tune.params` search space as Optuna suggestions, in the order the config lists them.

Conditional parameters (`when`) are sampled only when the fields they name hold the wanted values, which
Optuna's define-by-run trials allow. An enqueued trial (a re-queued killed trial) gets its fixed values back
from the same suggest calls.
"""

from __future__ import annotations

from typing import Any

import optuna

from trainflow.config.tuning import ParamRange, TuneConfig, condition_holds


def suggest(trial: optuna.Trial, name: str, spec: ParamRange) -> Any:
    if spec.float_range is not None:
        low, high = spec.float_range
        return trial.suggest_float(name, low, high, log=spec.log, step=spec.step)
    if spec.int_range is not None:
        low, high = spec.int_range
        return trial.suggest_int(name, int(low), int(high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_categorical(name, list(spec.categorical or []))


def suggest_params(trial: optuna.Trial, tune: TuneConfig, payload: dict[str, Any]) -> dict[str, Any]:
    """{path: value} for this trial; conditional parameters whose condition fails are left out."""
    chosen: dict[str, Any] = {}
    for path, spec in tune.params.items():
        if condition_holds(spec, chosen, payload):
            chosen[path] = suggest(trial, path, spec)
    return chosen


def grid_search_space(tune: TuneConfig) -> dict[str, list[Any]]:
    """{path: values} for optuna's GridSampler (the config check guarantees every range is discrete)."""
    return {path: list(spec.grid_values() or []) for path, spec in tune.params.items()}


def grid_size(tune: TuneConfig) -> int:
    size = 1
    for values in grid_search_space(tune).values():
        size *= len(values)
    return size
