"""Run a pipeline on this machine through kfp.local, then print (and optionally save) what happened.

Each stage runs as its own subprocess with this Python (SubprocessRunner with
use_venv=False), exactly the component code a cluster would run, minus the
container. kfp.local ignores GPU requests and retries; those are checked on
the compiled YAML instead. Checkpoints live under <state>/checkpoints/<run_name>,
so re-running the same config after a kill resumes training there.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig
from trainflow.mlflow_tracking import default_tracking_uri

STAGES = {
    "text_to_image": ("ingest_split", "build_cache", "train", "evaluate", "score_generation", "register_model"),
    "supervised": ("ingest_split", "build_cache", "train", "evaluate", "register_model"),
}
# Headline rows of the summary: (label, metadata key, better is).
SUPERVISED_ROWS = {
    "classification": [("accuracy", "accuracy", "higher"), ("macro F1", "f1_macro", "higher"),
                       ("ROC-AUC (one-vs-rest)", "roc_auc", "higher"), ("log loss", "log_loss", "lower")],
    "regression": [("R²", "r2", "higher"), ("RMSE", "rmse", "lower"), ("MAE", "mae", "lower"), ("MSE", "mse", "lower")],
    "segmentation": [("mean IoU", "mean_iou", "higher"), ("mean Dice", "mean_dice", "higher"),
                     ("pixel accuracy", "pixel_accuracy", "higher")],
}


def checkpoint_folder(config: RunConfig, state_dir: str | Path) -> Path:
    return Path(state_dir).resolve() / "checkpoints" / config.run_name


def run_locally(config: RunConfig, state_dir: str | Path = ".trainflow", fresh: bool = False) -> dict[str, Any]:
    """Execute the config's pipeline locally; returns the pipeline's output artifacts and facts."""
    from kfp import local

    state = Path(state_dir).resolve()
    pipeline_root = state / "pipeline-runs"
    tracking_uri = config.registration.tracking_uri or default_tracking_uri(state)
    checkpoints = checkpoint_folder(config, state)
    if fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    if config.task == "text_to_image":
        from pipelines.text_to_image import pipeline_arguments, text_to_image_pipeline as pipeline
    else:
        from pipelines.supervised import pipeline_arguments, supervised_pipeline as pipeline
    arguments = pipeline_arguments(config, tracking_uri=tracking_uri)
    arguments["checkpoint_dir"] = str(checkpoints)
    started = time.time()
    with warnings.catch_warnings():
        # Our image is a Python image; kfp.local only guesses from its name.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        task = pipeline(**arguments)
    outputs = {name: task.outputs[name] for name in task.outputs}
    return {"config": config, "outputs": outputs, "seconds": time.time() - started, "tracking_uri": tracking_uri,
            "pipeline_root": pipeline_root}


def run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the printed summary shows, as JSON: stages, metrics, best epoch, stop reason, registration."""
    config: RunConfig = result["config"]
    outputs = result["outputs"]
    family = "text_to_image" if config.task == "text_to_image" else "supervised"
    by_stage = {artifact.metadata.get("stage"): artifact for artifact in outputs.values()}
    stages = []
    for stage in STAGES[family]:
        artifact = by_stage.get(stage)
        seconds = artifact.metadata.get("stage_seconds") if artifact is not None else None
        stages.append({"stage": stage, "status": "succeeded", "seconds": seconds})
    evaluation = dict(outputs["eval_metrics"].metadata)
    scores = dict(outputs["score_metrics"].metadata) if "score_metrics" in outputs else {}
    registration = dict(outputs["registration"].metadata)
    metrics = {k: v for k, v in {**evaluation, **scores}.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("stage")}
    return {
        "run_name": config.run_name, "task": config.task, "stages": stages, "metrics": metrics,
        "skipped_metrics": dict((outputs["samples"].metadata.get("skipped") or {}) if "samples" in outputs else {}),
        "best_step": _int(evaluation.get("best_step")), "best_epoch": evaluation.get("best_epoch"),
        "steps_run": _int(evaluation.get("steps_run")), "stop_reason": evaluation.get("stop_reason"),
        "registration": {k: registration.get(k) for k in ("registered", "model_name", "model_version", "reasons",
                                                           "mlflow_run_id", "tracking_uri")},
        "artifacts": {name: artifact.path for name, artifact in outputs.items()},
        "total_seconds": round(result["seconds"], 1),
    }


def write_summary_json(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(path, run_summary(result))


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)
    summary = run_summary(result)
    stages = Table(title="Stages", show_lines=False)
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("seconds (inside stage)", justify="right")
    for stage in summary["stages"]:
        seconds = stage["seconds"]
        stages.add_row(stage["stage"], stage["status"], f"{seconds:.1f}" if seconds is not None else "(see logs)")
    console.print(stages)
    if summary["task"] == "text_to_image":
        _print_generation_metrics(result, console)
    else:
        _print_supervised_metrics(summary, console)
    console.print(f"best step {summary['best_step']} (epoch {summary['best_epoch']}) of {summary['steps_run']} steps: "
                  f"{summary['stop_reason']}")
    registration = summary["registration"]
    if registration.get("registered"):
        console.print(f"[green]registered[/green] model [bold]{registration['model_name']}[/bold] "
                      f"version [bold]{_int(registration['model_version'])}[/bold] in MLflow ({registration['tracking_uri']})")
    else:
        console.print(f"[red]not registered[/red] ({registration.get('model_name')}): " + "; ".join(registration.get("reasons") or []))
    console.print(f"MLflow run {registration.get('mlflow_run_id')} — browse with: mlflow ui --backend-store-uri {result['tracking_uri']}")
    console.print("Artifacts:")
    for name, path in summary["artifacts"].items():
        console.print(f"  {name:<14} {path}")
    console.print(f"Total wall time: {result['seconds']:.0f}s")


def _print_generation_metrics(result: dict[str, Any], console: Console) -> None:
    outputs = result["outputs"]
    evaluation, scores, samples = (outputs["eval_metrics"].metadata, outputs["score_metrics"].metadata,
                                   outputs["samples"].metadata)
    table = Table(title="Fine-tuned vs. base model (same run, same test split)")
    for column, justify in (("metric", "left"), ("fine-tuned", "right"), ("base", "right"), ("better is", "left")):
        table.add_column(column, justify=justify)
    rows = [("test denoising loss", evaluation, "test_loss", "lower"),
            (f"FID ({samples.get('fid_features', '?')} features)", scores, "fid", "lower"),
            ("prompt accuracy", scores, "prompt_accuracy", "higher"),
            ("CLIP score", scores, "clip_score", "higher"),
            ("LPIPS diversity", scores, "lpips_diversity", "higher")]
    for label, source, key, direction in rows:
        if key in source:
            base = source.get(f"base_{key}")
            table.add_row(label, f"{source[key]:.4f}", f"{base:.4f}" if base is not None else "-", direction)
    console.print(table)
    for name, reason in (samples.get("skipped") or {}).items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")


def _print_supervised_metrics(summary: dict[str, Any], console: Console) -> None:
    metrics = summary["metrics"]
    table = Table(title=f"Test split ({_int(metrics.get('num_test'))} records), best checkpoint")
    for column, justify in (("metric", "left"), ("value", "right"), ("95% interval", "right"), ("better is", "left")):
        table.add_column(column, justify=justify)
    for label, key, direction in SUPERVISED_ROWS[summary["task"]]:
        if key not in metrics:
            continue
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None else "-"
        table.add_row(label, f"{metrics[key]:.4f}", interval, direction)
        baseline = metrics.get(f"baseline_linear_{key}")
        if baseline is not None:
            table.add_row(f"  {label}, scikit-learn LinearRegression (same split)", f"{baseline:.4f}", "-", direction)
    console.print(table)


def _int(value: Any) -> Any:
    """KFP stores metadata numbers as floats; show counts as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
