"""Run a pipeline on this machine through kfp.local, then print (and optionally save) what happened.

Each stage runs as its own subprocess with this Python (SubprocessRunner with
use_venv=False), exactly the component code a cluster would run, minus the
container. kfp.local ignores GPU requests and retries; those are checked on
the compiled YAML instead. Checkpoints live under <state>/checkpoints/<run_name>,
so re-running the same config after a kill resumes training there.

Output is quiet by default: kfp.local prints every task's streamed log and its own executor
records to stdout (builtins.print inside `logging_utils.indented_print`, and a root-logger
handler bound to sys.stdout in `local_logger_context`), so the run redirects stdout into a
`StageReporter`, which prints one line as each stage starts and ends, a progress bar on a
terminal, and, for a failed stage, its last log lines and one-line error. `verbose=True`
leaves kfp.local's output as it is.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig
from trainflow.errors import ConfigError, UserFacingError
from trainflow.registry.tracking import default_tracking_uri

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


class StageFailed(UserFacingError):
    """A stage of a local run failed; its last log lines were printed, the message is its one-line error."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - ")  # kfp.local's own log format
_EPOCH = re.compile(r"\(epoch ([\d.]+)/(\d+)\)")
_STAGE_ERROR = re.compile(r"^trainflow: \S+ failed: (.*)$")  # trainflow.stages.runner's user-error line
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
_WARNING = re.compile(r"^[\w-]+: warning: ")  # e.g. "train: warning: skipping checkpoint ...": shown even when quiet


def one_line_error(lines: list[str]) -> str:
    """The error a failed stage's log ends with: trainflow's user-error line, else the exception line."""
    for pattern in (_STAGE_ERROR, _EXCEPTION):
        for line in reversed(lines):
            match = pattern.match(line.strip())
            if match:
                return match.group(1) if pattern is _STAGE_ERROR else line.strip()
    return lines[-1].strip() if lines else "no output (see --verbose)"


class StageReporter(io.TextIOBase):
    """A text stream that reads kfp.local's output and prints one line as each stage starts and ends.

    Inputs: the console to print on (not sys.stdout while redirected), the number of stages, how
    many log lines to show for a failed stage. On a terminal a transient bar shows the running
    stage's elapsed time (training: epochs). `failure` holds (stage, one-line error) after a failure.
    """

    def __init__(self, console: Console, total_stages: int, tail_lines: int = 20):
        self.console, self.total, self.failure = console, total_stages, None
        self._partial, self._current, self._started_at, self._count = "", None, 0.0, 0
        self._log: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._progress = (Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                   console=console, transient=True) if console.is_terminal else None)
        self._bar: Any = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._read(_ANSI.sub("", line))
        return len(text)

    def __enter__(self) -> "StageReporter":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _read(self, line: str) -> None:
        if match := _STARTED.search(line):
            self._start(match.group(1).replace("-", "_"))
        elif match := _FINISHED.search(line):
            self._finish(match.group(2) == "SUCCESS")
        elif self._current is not None and not _KFP_RECORD.match(line):
            text = line[4:] if line.startswith("    ") else line  # kfp.local indents streamed lines by 4
            if text.strip():
                self._log.append(text)
                self._advance(text)
            if _WARNING.match(text):
                self.console.print(f"  {text}", markup=False, highlight=False)

    def _start(self, stage: str) -> None:
        self._current, self._started_at = stage, time.monotonic()
        self._count += 1
        self._log.clear()
        self.console.print(f"[{self._count}/{self.total}] {stage:<17} started", highlight=False)
        if self._progress is not None:
            self._bar = self._progress.add_task(stage, total=None)

    def _advance(self, text: str) -> None:
        match = _EPOCH.search(text)
        if match and self._bar is not None:
            self._progress.update(self._bar, completed=float(match.group(1)), total=float(match.group(2)),
                                  description=f"{self._current} epoch {match.group(1)}/{match.group(2)}")

    def _finish(self, succeeded: bool) -> None:
        stage, seconds = self._current, time.monotonic() - self._started_at
        if self._bar is not None:
            self._progress.remove_task(self._bar)
            self._bar = None
        status = "[green]succeeded[/green]" if succeeded else "[red]failed[/red]"
        self.console.print(f"[{self._count}/{self.total}] {stage:<17} {status} in {seconds:.1f} s", highlight=False)
        if not succeeded:
            lines = list(self._log)
            self.console.print(f"Last {len(lines)} log lines of {stage}:", highlight=False)
            for line in lines:
                self.console.print(f"  {line}", markup=False, highlight=False)
            self.failure = (stage, one_line_error(lines))
        self._current = None


def run_locally(config: RunConfig, state_dir: str | Path = ".trainflow", fresh: bool = False,
                verbose: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Execute the config's pipeline locally; returns the pipeline's output artifacts and facts.

    verbose: show kfp.local's own output (every task's log and executor records) instead of one
    line per stage. console: where the stage lines go (default: stdout).
    Failures: ConfigError for train.distributed (cluster only); StageFailed naming the failed
    stage and its error (quiet mode; verbose mode keeps kfp.local's RuntimeError).
    """
    from kfp import local

    if config.train.distributed is not None:
        raise ConfigError("train.distributed launches a PyTorchJob/TrainJob on a cluster; remove it to train on "
                          "this machine, or run the pipeline on Kubeflow (trainflow submit).")
    state = Path(state_dir).resolve()
    pipeline_root = state / "pipeline-runs"
    tracking_uri = config.registration.tracking_uri or default_tracking_uri(state)
    checkpoints = checkpoint_folder(config, state)
    if fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    family = "text_to_image" if config.task == "text_to_image" else "supervised"
    if family == "text_to_image":
        from pipelines.text_to_image import pipeline_arguments, text_to_image_pipeline as pipeline
    else:
        from pipelines.supervised import pipeline_arguments, supervised_pipeline as pipeline
    arguments = pipeline_arguments(config, tracking_uri=tracking_uri)
    arguments["checkpoint_dir"] = str(checkpoints)
    reporter = None
    if not verbose:  # the console must hold the real stdout: it prints while stdout is redirected
        reporter = StageReporter(console or Console(file=sys.stdout, soft_wrap=True), len(STAGES[family]) + 1)
    started = time.time()
    with warnings.catch_warnings(), contextlib.ExitStack() as quiet:
        # Our image is a Python image; kfp.local only guesses from its name.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        if reporter is not None:
            quiet.enter_context(reporter)
            quiet.enter_context(contextlib.redirect_stdout(reporter))
        try:
            task = pipeline(**arguments)
        except RuntimeError:
            if reporter is not None and reporter.failure is not None:
                stage, error = reporter.failure
                raise StageFailed(f"stage {stage} failed: {error}") from None
            raise
    outputs = {name: task.outputs[name] for name in task.outputs}
    return {"config": config, "outputs": outputs, "seconds": time.time() - started, "tracking_uri": tracking_uri,
            "pipeline_root": pipeline_root}


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
    family = "text_to_image" if config.task == "text_to_image" else "supervised"
    by_stage = {artifact.metadata.get("stage"): artifact for artifact in outputs.values()}
    stages = []
    run_folder = Path(outputs["eval_metrics"].path).parents[1]  # kfp.local: <pipeline root>/<run>/<task>/<output>
    for stage in STAGES[family]:
        artifact = by_stage.get(stage)
        seconds = artifact.metadata.get("stage_seconds") if artifact is not None else _recorded_seconds(run_folder, stage)
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
    for column, justify in (("metric", "left"), ("fine-tuned", "right"), ("95% interval", "right"), ("base", "right"),
                            ("better is", "left")):
        table.add_column(column, justify=justify)
    rows = [("test denoising loss", evaluation, "test_loss", "lower"),
            (f"FID ({samples.get('fid_features', '?')} features)", scores, "fid", "lower"),
            ("KID (same features)", scores, "kid", "lower"),
            ("prompt accuracy", scores, "prompt_accuracy", "higher"),
            ("CLIP score", scores, "clip_score", "higher"),
            ("LPIPS to the test image", scores, "lpips", "lower"),
            ("LPIPS diversity", scores, "lpips_diversity", "higher")]
    for label, source, key, direction in rows:
        if key in source:
            base = source.get(f"base_{key}")
            low, high = source.get(f"{key}_ci_low"), source.get(f"{key}_ci_high")
            interval = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "-"
            table.add_row(label, f"{source[key]:.4f}", interval, f"{base:.4f}" if base is not None else "-", direction)
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
