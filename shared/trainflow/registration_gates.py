"""Decide whether a trained model may be registered, and say why not."""

from __future__ import annotations

from trainflow.config import Gate

# Metrics where a smaller value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = {"fid", "test_loss", "best_val_loss"}


def failed_gates(gates: list[Gate], metrics: dict[str, float]) -> list[str]:
    """One sentence per failed gate; an empty list means registration may proceed.

    A gate on a metric that was not computed fails (with that reason): an
    absent number must never pass a quality bar by default.
    """
    failures = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if value is None:
            failures.append(f"{gate.metric} was not computed, so its gate cannot pass")
            continue
        if gate.min is not None and value < gate.min:
            failures.append(f"{gate.metric} = {value:.4f} is below the minimum {gate.min:g}")
        if gate.max is not None and value > gate.max:
            failures.append(f"{gate.metric} = {value:.4f} is above the maximum {gate.max:g}")
        if gate.beat_base:
            base = metrics.get(f"base_{gate.metric}")
            if base is None:
                failures.append(f"base_{gate.metric} was not computed, so 'beat the base model' cannot be checked")
            elif (value >= base) if gate.metric in LOWER_IS_BETTER else (value <= base):
                failures.append(f"{gate.metric} = {value:.4f} does not beat the base model's {base:.4f}")
    return failures
