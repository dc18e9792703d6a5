"""What a finished (or stopped) study says: the trial table, counts, the best trial or the Pareto front.

Trials that were superseded (a killed worker's trial, continued under the same slot) or asked past the
budget are left out of the table's counts but listed with why. Several objectives: the Pareto-optimal
trials, and the refit's pick by one stated rule (REFIT_RULE).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from trainflow.experiments.trial_claims import OVER_BUDGET, STALE, slot_of

REFIT_RULE = ("among the Pareto-optimal trials, the one with the best value of the first objective "
              "(ties: the lower trial number)")


def _row(trial: optuna.trial.FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    status = trial.state.name.lower()
    if attrs.get(STALE):
        status = "superseded"
    elif attrs.get(OVER_BUDGET):
        status = "over budget"
    row: dict[str, Any] = {
        "number": trial.number, "slot": slot_of(trial), "state": status, "params": dict(trial.params),
        "values": dict(zip(metrics, trial.values)) if trial.values is not None and trial.state == TrialState.COMPLETE else {},
    }
    for key in ("best_step", "best_epoch", "steps_run", "stop_kind", "stop_reason", "seconds", "cpu_seconds", "error",
                "worker", "continues_trial"):
        if f"trainflow_{key}" in attrs:
            row[key] = attrs[f"trainflow_{key}"]
    if trial.intermediate_values:
        row["last_reported"] = trial.intermediate_values[max(trial.intermediate_values)]
    return row


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def pick_best(study: optuna.Study, objectives: list[tuple[str, str]]) -> tuple[optuna.trial.FrozenTrial | None, list[int]]:
    """(the trial the refit trains, the Pareto front's trial numbers) over complete trials."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None, []
    if len(objectives) == 1:
        direction = objectives[0][1]
        best = complete[0]
        for trial in complete[1:]:
            if _better(trial.values[0], best.values[0], direction):
                best = trial
        return best, [best.number]
    front = sorted(study.best_trials, key=lambda t: t.number)
    chosen = front[0]
    for trial in front[1:]:
        if _better(trial.values[0], chosen.values[0], objectives[0][1]):
            chosen = trial
    return chosen, [t.number for t in front]


def study_results(study: optuna.Study, objectives: list[tuple[str, str]]) -> dict[str, Any]:
    """The JSON the report, the KFP metrics and the README read."""
    metrics = [metric for metric, _ in objectives]
    trials = study.get_trials(deepcopy=False)
    rows = [_row(t, metrics) for t in trials]
    counted = [r for r in rows if r["state"] not in ("superseded", "over budget")]
    counts = {state: sum(1 for r in counted if r["state"] == state) for state in ("complete", "pruned", "fail", "running", "waiting")}
    best, front = pick_best(study, objectives)
    finished = counts["complete"] + counts["pruned"] + counts["fail"]
    results: dict[str, Any] = {
        "study_name": study.study_name, "objectives": [{"metric": m, "direction": d} for m, d in objectives],
        "counts": {**counts, "finished": finished, "superseded": sum(1 for r in rows if r["state"] == "superseded")},
        "pruned_share": round(counts["pruned"] / finished, 4) if finished else None,
        "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in rows), 2),
        "trials": rows, "pareto_front": front if len(objectives) > 1 else [],
        "refit_rule": REFIT_RULE if len(objectives) > 1 else f"the complete trial with the best {metrics[0]}",
    }
    results.update(_importances(study, len(objectives)))
    if best is not None:
        results["best"] = {"number": best.number, "params": dict(best.params), "values": dict(zip(metrics, best.values)),
                           "best_epoch": best.user_attrs.get("trainflow_best_epoch"),
                           "best_step": best.user_attrs.get("trainflow_best_step")}
    return results


def _importances(study: optuna.Study, objectives: int) -> dict[str, Any]:
    """{"importances": {param: share}} from Optuna's default evaluator, or {"importance_note": why there are none}."""
    import warnings

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {"importance_note": f"needs at least 2 complete trials, the study has {len(complete)}"}
    try:
        with warnings.catch_warnings():  # "importances will be equal" on tiny studies: the numbers say so themselves
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if objectives > 1 else None)
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter varied across complete trials
        return {"importance_note": str(exc).splitlines()[0]}
    return {"importances": {name: round(float(share), 4) for name, share in values.items()}}
