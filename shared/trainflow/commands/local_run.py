"""Run a pipeline on this machine through kfp.local, showing one line per stage (the summary: run_summary.py).

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

Retries (local_retries.py): a stage that failed with a user error (exit code 2) is not run again; another
failure is, after the pipeline's backoff, and its lines say which attempt runs ("[4/6] train, attempt 2 of 3").
The counter counts stages, not attempts, so it never runs past the total.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from trainflow.commands.local_retries import stage_retries
from trainflow.config import RunConfig
from trainflow.contained_paths import path_inside, remove_inside, state_directory
from trainflow.errors import ConfigError, UserFacingError
from trainflow.redaction import environment_variables, redact_text, split_credentials
from trainflow.registry.tracking import default_tracking_uri

def checkpoint_folder(config: RunConfig, state_dir: str | Path) -> Path:
    """<state>/checkpoints/<run_name>; UserFacingError if it would lead out of the state directory."""
    return path_inside(state_dir, "checkpoints", config.run_name)


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
    A stage keeps its number over its attempts; `attempt_started` (from the retry loop) names the attempt.
    """

    def __init__(self, console: Console, total_stages: int, tail_lines: int = 20):
        self.console, self.total, self.failure = console, total_stages, None
        self._partial, self._current, self._started_at = "", None, 0.0
        self._numbers: dict[str, int] = {}  # stage -> its number in the run, kept over its attempts
        self._attempts: dict[str, tuple[int, int]] = {}  # stage -> (attempt, attempts) when it has several
        self._label = ""
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
                self.console.print(f"  {redact_text(text)}", markup=False, highlight=False)

    def attempt_started(self, stage: str, attempt: int, attempts: int) -> None:
        """The retry loop starts attempt `attempt` of `attempts` of `stage` (its lines say so from the second on)."""
        self._attempts[stage] = (attempt, attempts)

    def _start(self, stage: str) -> None:
        self._current, self._started_at = stage, time.monotonic()
        number = self._numbers.setdefault(stage, len(self._numbers) + 1)
        self.total = max(self.total, number)
        attempt, attempts = self._attempts.get(stage, (1, 1))
        name = stage if attempt == 1 else f"{stage}, attempt {attempt} of {attempts}"
        self._label = f"[{number}/{self.total}] {name:<17}"
        self._log.clear()
        self.console.print(f"{self._label} started", highlight=False)
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
        self.console.print(f"{self._label} {status} in {seconds:.1f} s", highlight=False)
        if not succeeded:
            lines = list(self._log)
            self.console.print(f"Last {len(lines)} log lines of {stage}:", highlight=False)
            for line in lines:
                self.console.print(f"  {redact_text(line)}", markup=False, highlight=False)
            self.failure = (stage, redact_text(one_line_error(lines)))
        self._current = None


def attempt_failed_line(stage: str, attempt: int, attempts: int, delay: float | None) -> str | None:
    """The line after a failed attempt: when the next one runs, or why there is none (None: it was the last)."""
    if delay is not None:
        return f"  {stage}: attempt {attempt} of {attempts} failed; retrying in {delay:.0f} s"
    if attempt < attempts:
        return f"  {stage}: not retried: it failed with a user error (exit code 2), which running it again cannot fix"
    return None


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
    state = state_directory(state_dir)
    pipeline_root = state / "pipeline-runs"
    # user:password in the tracking URI reach the stages as MLFLOW_TRACKING_USERNAME/PASSWORD, never as a parameter.
    tracking_uri, credentials = split_credentials(config.registration.tracking_uri or default_tracking_uri(state))
    checkpoints = checkpoint_folder(config, state)
    if fresh:
        remove_inside(state, checkpoints)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    module, pipeline = pipeline_for_task(config.task)
    arguments = module.pipeline_arguments(config, tracking_uri=tracking_uri)
    arguments["checkpoint_dir"] = str(checkpoints)
    reporter = None
    # The console must hold the real stdout: it prints while stdout is redirected.
    console = console or Console(file=sys.stdout, soft_wrap=True)
    if not verbose:
        reporter = StageReporter(console, len(module.STAGES) + 1)
    on_attempt = reporter.attempt_started if reporter is not None else lambda *_: None

    def on_failure(*attempt: Any) -> None:
        if line := attempt_failed_line(*attempt):
            console.print(line, markup=False, highlight=False)

    started = time.time()
    with warnings.catch_warnings(), contextlib.ExitStack() as quiet, stage_retries(on_attempt, on_failure):
        # Our image is a Python image; kfp.local only guesses from its name.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        # The stages' MLflow records (train steps, evaluate, score) go to the register section's store, nested
        # under one parent run per pipeline run (trainflow.registry.pipeline_run).
        quiet.enter_context(environment_variables({**credentials, "MLFLOW_TRACKING_URI": tracking_uri,
                                                   "MLFLOW_EXPERIMENT_NAME": config.registration.experiment}))
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
            "pipeline_root": pipeline_root, "stages": module.STAGES}


def pipeline_for_task(task: str) -> tuple[Any, Any]:
    """(the pipeline module, its pipeline function without Kubernetes settings) of the pipeline that runs `task`."""
    import importlib

    from trainflow.kubeflow.pipeline_package import PIPELINES
    from trainflow.tasks import get_task

    module_name, function_name = PIPELINES[get_task(task).pipeline]
    module = importlib.import_module(module_name)
    return module, getattr(module, function_name)


def run_command(args: argparse.Namespace) -> int:
    """`trainflow run`: the config's pipeline here, then its summary (and --summary-json)."""
    from trainflow.commands.run_summary import print_summary, write_summary_json
    from trainflow.config import load_config

    config = load_config(args.config)
    print(f"trainflow: running '{config.run_name}' ({config.task}) locally (state in {Path(args.state_dir).resolve()})",
          flush=True)
    try:
        result = run_locally(config, args.state_dir, fresh=args.fresh, verbose=args.verbose)
    except RuntimeError as exc:  # kfp.local reports a failed task this way; its log is printed above
        raise UserFacingError(f"{redact_text(str(exc))} See that stage's log above for its error.") from None
    print_summary(result)
    if args.summary_json:
        write_summary_json(result, args.summary_json)
    return 0
