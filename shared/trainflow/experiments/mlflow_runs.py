"""A study or a cross-validation in MLflow: one parent run, one child run per trial or fold.

Children carry the parameters and validation values of a trial (state, stop reason, CPU-seconds as tags
and metrics), or a fold's held-out metrics; the parent carries the headline numbers. Child runs are
tagged with `mlflow.parentRunId`, which is how the MLflow UI nests them.
"""

from __future__ import annotations

from typing import Any

from trainflow.redaction import redact, redact_text
from trainflow.registry.tracking import ensure_experiment


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_parent_with_children(tracking_uri: str, experiment: str, parent_name: str, parent_metrics: dict[str, Any],
                             parent_tags: dict[str, str], children: list[dict[str, Any]]) -> str:
    """Create the parent run and its children (each: name, params, metrics, tags); returns the parent run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    parent = client.create_run(experiment_id, run_name=parent_name, tags=redact(parent_tags))
    client.log_batch(parent.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in _numbers(parent_metrics).items()])
    for child in children:
        run = client.create_run(experiment_id, run_name=child["name"],
                                tags={**redact(child.get("tags", {})), "mlflow.parentRunId": parent.info.run_id})
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, v, 0, 0) for k, v in _numbers(child.get("metrics", {})).items()],
                         params=[Param(k, redact_text(str(v))[:6000]) for k, v in child.get("params", {}).items()])
        client.set_terminated(run.info.run_id, status="FINISHED" if child.get("finished", True) else "FAILED")
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def log_study(tracking_uri: str, experiment: str, results: dict[str, Any]) -> str:
    best = results.get("best") or {}
    children = [{"name": f"trial {row['number']}", "params": row["params"],
                 "metrics": {**row["values"], **{k: row[k] for k in ("seconds", "cpu_seconds", "steps_run", "best_step") if k in row}},
                 "tags": {"trainflow.trial_state": row["state"], "trainflow.stop_reason": str(row.get("stop_reason") or row.get("error") or "")},
                 "finished": row["state"] in ("complete", "pruned")} for row in results["trials"]]
    return log_parent_with_children(
        tracking_uri, experiment, f"tune {results['study_name']}",
        {**{f"best_{k}": v for k, v in (best.get("values") or {}).items()}, "trials_complete": results["counts"]["complete"],
         "trials_pruned": results["counts"]["pruned"], "trials_failed": results["counts"]["fail"],
         "cpu_seconds": results["cpu_seconds"]},
        {"trainflow.kind": "tuning", "trainflow.best_trial": str(best.get("number"))}, children)


def log_cross_validation(tracking_uri: str, experiment: str, results: dict[str, Any]) -> str:
    parent_metrics = {f"{name}_{stat}": row[stat] for name, row in results["metrics"].items()
                      for stat in ("mean", "std", "ci_low", "ci_high") if stat in row}
    children = [{"name": f"repeat {f['repeat']} fold {f['fold']}", "metrics": f["metrics"],
                 "params": {"repeat": f["repeat"], "fold": f["fold"], "n_train": f["n_train"], "n_held_out": f["n_held_out"]}}
                for f in results["folds"]]
    return log_parent_with_children(tracking_uri, experiment, f"cross-validate {results['run_name']}", parent_metrics,
                                    {"trainflow.kind": "cross_validation"}, children)
