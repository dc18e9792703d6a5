"""What `trainflow run` prints (and `--summary-json` writes) after a local pipeline run: stages, metrics, registration.

The metric rows come from the task (trainflow.tasks: its summary metrics, their labels and
directions, the reference model scored beside it and the baselines fitted on the same split);
nothing here knows a task by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig
from trainflow.redaction import redact, redact_text
from trainflow.tasks import TaskDefinition, get_task


def _recorded_seconds(run_folder: Path, stage: str) -> float | None:
    """A stage's time from the artifact metadata kfp.local wrote for it, for stages whose outputs the pipeline does not return."""
    record = run_folder / stage.replace("_", "-") / "executor_output.json"
    try:
        outputs = json.loads(record.read_text(encoding="utf-8")).get("artifacts", {})
    except (OSError, ValueError):
        return None
    for output in outputs.values():
        for artifact in output.get("artifacts", []):
            if "stage_seconds" in artifact.get("metadata", {}):
                return artifact["metadata"]["stage_seconds"]
    return None


def run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the printed summary shows, as JSON: stages, metrics, best epoch, stop reason, registration."""
    config: RunConfig = result["config"]
    outputs = result["outputs"]
    by_stage = {artifact.metadata.get("stage"): artifact for artifact in outputs.values()}
    stages = []
    run_folder = Path(outputs["eval_metrics"].path).parents[1]  # kfp.local: <pipeline root>/<run>/<task>/<output>
    for stage in result["stages"]:
        artifact = by_stage.get(stage)
        seconds = artifact.metadata.get("stage_seconds") if artifact is not None else _recorded_seconds(run_folder, stage)
        stages.append({"stage": stage, "status": "succeeded", "seconds": seconds})
    evaluation = dict(outputs["eval_metrics"].metadata)
    scores = dict(outputs["score_metrics"].metadata) if "score_metrics" in outputs else {}
    registration = dict(outputs["registration"].metadata)
    metrics = {k: v for k, v in {**evaluation, **scores}.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("stage")}
    samples = dict(outputs["samples"].metadata) if "samples" in outputs else {}
    return {
        "run_name": config.run_name, "task": config.task, "stages": stages, "metrics": metrics,
        "skipped_metrics": dict(samples.get("skipped") or {}),
        "facts": {k: v for k, v in samples.items() if isinstance(v, str)},
        "best_step": _int(evaluation.get("best_step")), "best_epoch": evaluation.get("best_epoch"),
        "steps_run": _int(evaluation.get("steps_run")), "stop_reason": evaluation.get("stop_reason"),
        "registration": {k: registration.get(k) for k in ("registered", "model_name", "model_version", "reasons",
                                                           "mlflow_run_id", "tracking_uri", "promoted",
                                                           "promotion_reason")},
        "artifacts": {name: artifact.path for name, artifact in outputs.items()},
        "total_seconds": round(result["seconds"], 1),
    }


def write_summary_json(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(path, redact(run_summary(result)))


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)
    summary = redact(run_summary(result))
    stages = Table(title="Stages", show_lines=False)
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("seconds (inside stage)", justify="right")
    for stage in summary["stages"]:
        seconds = stage["seconds"]
        stages.add_row(stage["stage"], stage["status"], f"{seconds:.1f}" if seconds is not None else "(see logs)")
    console.print(stages)
    console.print(metrics_table(get_task(summary["task"]), summary))
    for name, reason in summary["skipped_metrics"].items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    console.print(f"best step {summary['best_step']} (epoch {summary['best_epoch']}) of {summary['steps_run']} steps: "
                  f"{summary['stop_reason']}")
    registration = summary["registration"]
    if registration.get("registered"):
        console.print(f"[green]registered[/green] model [bold]{registration['model_name']}[/bold] "
                      f"version [bold]{_int(registration['model_version'])}[/bold] in MLflow ({registration['tracking_uri']}): "
                      + ("champion" if registration.get("promoted") else f"challenger ({registration.get('promotion_reason')})"))
    else:
        console.print(f"[red]not registered[/red] ({registration.get('model_name')}): " + "; ".join(registration.get("reasons") or []))
    console.print(f"MLflow run {registration.get('mlflow_run_id')} — browse with: mlflow ui --backend-store-uri {redact_text(result['tracking_uri'])}")
    console.print("Artifacts:")
    for name, path in summary["artifacts"].items():
        console.print(f"  {name:<14} {path}")
    console.print(f"Total wall time: {result['seconds']:.0f}s")


def metrics_table(task: TaskDefinition, summary: dict[str, Any]) -> Table:
    """The task's summary metrics: value, 95% interval, its reference model's value, and baselines under each row."""
    metrics, reference = summary["metrics"], task.reference
    if reference is not None:
        title = f"{task.trained_label.capitalize()} vs. {reference.label} (same run, same test split)"
        columns = ["metric", task.trained_label, "95% interval", reference.column or reference.label, "better is"]
    else:
        title = f"Test split ({_int(metrics.get('num_test'))} records), best checkpoint"
        columns = ["metric", "value", "95% interval", "better is"]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("metric", "better is") else "right")
    for spec in task.rows_for_summary():
        if spec.key not in metrics:
            continue
        low, high = metrics.get(f"{spec.key}_ci_low"), metrics.get(f"{spec.key}_ci_high")
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "-"
        label = spec.label.format_map(_Facts(summary["facts"]))
        row = [label, f"{metrics[spec.key]:.4f}", interval]
        if reference is not None:
            value = metrics.get(f"{reference.prefix}{spec.key}")
            row.append(f"{value:.4f}" if value is not None else "-")
        table.add_row(*row, spec.better_is)
        for baseline in task.baselines:
            value = metrics.get(f"{baseline.prefix}{spec.key}")
            if value is not None:
                table.add_row(f"  {label}, {baseline.label}", f"{value:.4f}", "-", spec.better_is)
    return table


class _Facts(dict):
    """Facts for metric labels such as 'FID ({fid_features} features)'; an unknown fact shows as '?'."""

    def __missing__(self, key: str) -> str:
        return "?"


def _int(value: Any) -> Any:
    """KFP stores metadata numbers as floats; show counts as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
