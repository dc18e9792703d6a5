"""Run the pipeline on this machine through kfp.local, then print what happened.

Each stage runs as its own subprocess with this Python (SubprocessRunner with
use_venv=False), exactly the component code a cluster would run, minus the
container. kfp.local ignores GPU requests and retries; those are checked on
the compiled YAML instead.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trainflow.config import RunConfig
from trainflow.mlflow_tracking import default_tracking_uri

STAGES = ("ingest_split", "build_cache", "train", "evaluate", "score_generation", "register_model")


def run_locally(config: RunConfig, state_dir: str | Path = ".trainflow") -> dict[str, Any]:
    """Execute the whole pipeline locally; returns the pipeline's output artifacts' facts."""
    from kfp import local

    from pipelines.text_to_image import pipeline_arguments, text_to_image_pipeline

    state = Path(state_dir).resolve()
    pipeline_root = state / "pipeline-runs"
    tracking_uri = config.registration.tracking_uri or default_tracking_uri(state)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    arguments = pipeline_arguments(config, tracking_uri=tracking_uri)
    arguments["checkpoint_dir"] = str(state / "checkpoints" / config.run_name)
    started = time.time()
    with warnings.catch_warnings():
        # Our image is a Python image; kfp.local only guesses from its name.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = text_to_image_pipeline(**arguments)
    outputs = {name: task.outputs[name] for name in task.outputs}
    return {"outputs": outputs, "seconds": time.time() - started, "tracking_uri": tracking_uri, "pipeline_root": pipeline_root}


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)
    outputs = result["outputs"]
    by_stage = {artifact.metadata.get("stage"): artifact for artifact in outputs.values()}
    stages = Table(title="Stages", show_lines=False)
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("seconds (inside stage)", justify="right")
    for stage in STAGES:
        artifact = by_stage.get(stage)
        if artifact is None and stage == "build_cache":
            stages.add_row(stage, "succeeded", "(intermediate; see logs)")
            continue
        seconds = artifact.metadata.get("stage_seconds") if artifact else None
        stages.add_row(stage, "succeeded", f"{seconds:.1f}" if seconds is not None else "-")
    console.print(stages)

    evaluation = outputs["eval_metrics"].metadata
    scores = outputs["score_metrics"].metadata
    samples = outputs["samples"].metadata
    metrics = Table(title="Fine-tuned vs. base model (same run, same test split)")
    metrics.add_column("metric")
    metrics.add_column("fine-tuned", justify="right")
    metrics.add_column("base", justify="right")
    metrics.add_column("better is")
    rows = [("test denoising loss", evaluation, "test_loss", "lower"),
            (f"FID ({samples.get('fid_features', '?')} features)", scores, "fid", "lower"),
            ("prompt accuracy", scores, "prompt_accuracy", "higher"),
            ("CLIP score", scores, "clip_score", "higher"),
            ("LPIPS diversity", scores, "lpips_diversity", "higher")]
    for label, source, key, direction in rows:
        if key in source:
            base = source.get(f"base_{key}")
            metrics.add_row(label, f"{source[key]:.4f}", f"{base:.4f}" if base is not None else "-", direction)
    console.print(metrics)
    for name, reason in (samples.get("skipped") or {}).items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    console.print(
        f"best epoch {_int(evaluation.get('best_epoch'))} of {_int(evaluation.get('epochs_run'))}: {evaluation.get('stop_reason')}"
    )
    registration = outputs["registration"].metadata
    if registration.get("registered"):
        console.print(f"[green]registered[/green] model [bold]{registration['model_name']}[/bold] "
                      f"version [bold]{_int(registration['model_version'])}[/bold] in MLflow ({registration['tracking_uri']})")
    else:
        console.print(f"[red]not registered[/red] ({registration.get('model_name')}): " + "; ".join(registration.get("reasons", [])))
    console.print(f"MLflow run {registration.get('mlflow_run_id')} — browse with: mlflow ui --backend-store-uri {result['tracking_uri']}")
    console.print("Artifacts:")
    for name, artifact in outputs.items():
        console.print(f"  {name:<14} {artifact.path}")
    console.print(f"Total wall time: {result['seconds']:.0f}s")


def _int(value: Any) -> Any:
    """KFP stores metadata numbers as floats; show counts as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
