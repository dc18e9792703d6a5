"""Decide whether a trained model may be registered, and say why not."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainflow.config import Gate
from trainflow.metrics.metric_directions import is_lower_better


@dataclasses.dataclass
class ChampionEvidence:
    """What the register stage learned about the champion, for beat_champion gates.

    version: the champion's registry version, or None when the alias points nowhere yet.
    comparisons: metric -> the candidate-vs-champion result of `trainflow.evaluation.paired.compare_arrays`.
    unavailable: metric -> the sentence saying why that comparison could not be made.
    """

    model_name: str
    alias: str
    version: int | None
    comparisons: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)


def failed_gates(gates: list[Gate], metrics: dict[str, float]) -> list[str]:
    """One sentence per failed registration gate; an empty list means the candidate may be registered.

    Inputs: the register section's gates and the candidate's numbers (evaluate and score metadata).
    A gate on a metric that was not computed, or that is NaN or infinite, fails with that reason: an
    absent number must never pass a quality bar by default. beat_champion is not a registration gate:
    it decides promotion to champion (trainflow.registry.promotion). Directions come from
    metric_directions; a gate on a metric it does not know raises UserFacingError.
    """
    failures = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if value is None:
            if gate.min is not None or gate.max is not None or gate.beat_base:
                failures.append(f"{gate.metric} was not computed, so its gate cannot pass")
            continue
        if not math.isfinite(value):
            failures.append(f"{gate.metric} = {value} is not a finite number, so its gate cannot pass")
            continue
        if gate.min is not None and value < gate.min:
            failures.append(f"{gate.metric} = {value:.4f} is below the minimum {gate.min:g}")
        if gate.max is not None and value > gate.max:
            failures.append(f"{gate.metric} = {value:.4f} is above the maximum {gate.max:g}")
        if gate.beat_base:
            base = metrics.get(f"base_{gate.metric}")
            if base is None:
                failures.append(f"base_{gate.metric} was not computed, so 'beat the base model' cannot be checked")
            elif not math.isfinite(base):
                failures.append(f"base_{gate.metric} = {base} is not a finite number, so 'beat the base model' cannot be checked")
            elif (value >= base) if is_lower_better(gate.metric) else (value <= base):
                failures.append(f"{gate.metric} = {value:.4f} does not beat the base model's {base:.4f}")
    return failures


def champion_shortfall(gate: Gate, champion: ChampionEvidence | None, margin: float = 0.0) -> str | None:
    """Why the candidate does not beat the champion on `gate.metric` by `margin`, or None when it does (or none exists)."""
    if champion is None:
        return f"{gate.metric}: the champion comparison was not run, so 'beat the champion' cannot be checked"
    if champion.version is None:
        return None  # the first registered model becomes the champion; the report says "no champion yet"
    if gate.metric in champion.unavailable:
        return f"{gate.metric}: cannot compare with the champion: {champion.unavailable[gate.metric]}"
    result = champion.comparisons.get(gate.metric)
    if result is None:
        return f"{gate.metric}: no comparison with the champion was made, so 'beat the champion' cannot be checked"
    if result["improvement_low"] > margin:
        return None
    percent = f"{result['confidence']:.0%}"
    bar = "better than the champion" if margin == 0 else f"better than the champion by more than {margin:g}"
    return (f"{gate.metric} = {result['a']:.4f} vs the champion's (version {champion.version}) {result['b']:.4f}: "
            f"improvement {result['improvement']:+.4f}, {percent} interval {result['improvement_low']:+.4f} to "
            f"{result['improvement_high']:+.4f}, so it is not {bar} with {percent} confidence")
