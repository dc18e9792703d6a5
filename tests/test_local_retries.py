"""Local retries: a user error (exit code 2) is not retried, another failure is (with the pipeline's backoff), and
the stage lines count attempts apart from stages, never past the total."""

import contextlib
import io

import pytest
from kfp import dsl, local
from rich.console import Console

from trainflow.commands.local_retries import RetryPlan, stage_retries
from trainflow.commands.local_run import StageReporter, attempt_failed_line


@dsl.component(base_image="python:3.11")
def flaky(counter: str, codes: str):
    """Exits with the next code of `codes` (comma-separated) each time it runs; `counter` counts the runs."""
    import pathlib
    import sys

    path = pathlib.Path(counter)
    runs = int(path.read_text()) if path.exists() else 0
    path.write_text(str(runs + 1))
    code = int(codes.split(",")[runs])
    if code:
        print(f"flaky: failing with exit code {code}")
        sys.exit(code)


@dsl.pipeline
def flaky_pipeline(counter: str, codes: str):
    flaky(counter=counter, codes=codes).set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)


def run_flaky(tmp_path, codes: str) -> tuple[int, list[float], str, bool]:
    """(runs, the waits between them, what the stage lines showed, whether the pipeline succeeded)."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    shown, waits = io.StringIO(), []
    console = Console(file=shown, width=120, soft_wrap=True)
    reporter = StageReporter(console, 1)

    def on_failure(*attempt):
        if line := attempt_failed_line(*attempt):
            console.print(line, markup=False, highlight=False)

    succeeded = True
    with stage_retries(reporter.attempt_started, on_failure, sleep=waits.append), reporter, \
            contextlib.redirect_stdout(reporter):
        try:
            flaky_pipeline(counter=str(tmp_path / "runs"), codes=codes)
        except RuntimeError:
            succeeded = False
    return int((tmp_path / "runs").read_text()), waits, shown.getvalue(), succeeded


def test_a_user_error_is_not_retried(tmp_path):
    runs, waits, shown, succeeded = run_flaky(tmp_path, "2,0,0")
    assert (runs, waits, succeeded) == (1, [], False)
    lines = shown.splitlines()
    assert lines[0] == "[1/1] flaky             started" and lines[1].startswith("[1/1] flaky             failed in ")
    assert "  flaky: not retried: it failed with a user error (exit code 2), which running it again cannot fix" in lines


def test_other_failures_are_retried_with_the_backoff_and_each_attempt_is_named(tmp_path):
    runs, waits, shown, succeeded = run_flaky(tmp_path, "1,137,0")
    assert (runs, waits, succeeded) == (3, [60.0, 120.0], True)
    started = [line for line in shown.splitlines() if line.endswith(" started")]
    assert started == ["[1/1] flaky             started", "[1/1] flaky, attempt 2 of 3 started",
                       "[1/1] flaky, attempt 3 of 3 started"]
    assert "  flaky: attempt 1 of 3 failed; retrying in 60 s" in shown
    assert shown.splitlines()[-1].startswith("[1/1] flaky, attempt 3 of 3 succeeded in ")


def test_a_service_that_did_not_answer_is_retried(tmp_path):
    """Exit code 3 (ServiceUnavailableError: e.g. the tracking server was down) is one sentence, but retried."""
    runs, waits, shown, succeeded = run_flaky(tmp_path, "3,0,0")
    assert (runs, waits, succeeded) == (2, [60.0], True)
    assert "  flaky: attempt 1 of 3 failed; retrying in 60 s" in shown and "not retried" not in shown


def test_the_last_attempt_fails_without_a_further_wait(tmp_path):
    runs, waits, shown, succeeded = run_flaky(tmp_path, "1,1,1")
    assert (runs, waits, succeeded) == (3, [60.0, 120.0], False)
    assert "not retried" not in shown and "[2/" not in shown


def test_kfp_locals_own_functions_are_restored(tmp_path):
    from kfp.local import subprocess_task_handler
    from kfp.local.orchestrator import task_executor

    before = (task_executor.execute_single_task, subprocess_task_handler.run_local_subprocess)
    with pytest.raises(ZeroDivisionError), stage_retries(lambda *_: None, lambda *_: None):
        1 / 0
    assert (task_executor.execute_single_task, subprocess_task_handler.run_local_subprocess) == before


def test_a_stage_started_again_keeps_its_number_and_the_counter_never_passes_the_total():
    from test_quiet_run import kfp_output

    shown = io.StringIO()
    reporter = StageReporter(Console(file=shown, width=120, soft_wrap=True), 2)
    reporter.write(kfp_output("ingest-split", "SUCCESS", ["ok"]))
    for attempt in (1, 2, 3):
        reporter.attempt_started("train", attempt, 3)
        reporter.write(kfp_output("train", "FAILURE" if attempt < 3 else "SUCCESS", ["boom"]))
    numbers = [line.split("]")[0] + "]" for line in shown.getvalue().splitlines() if line.startswith("[")]
    assert numbers == ["[1/2]"] * 2 + ["[2/2]"] * 6


def test_the_retry_plan_follows_the_policy_kfp_local_would():
    flaky_pipeline.pipeline_spec  # compiled: the task's retry policy as KFP writes it
    (task_spec,) = flaky_pipeline.pipeline_spec.root.dag.tasks.values()
    plan = RetryPlan.of(task_spec)
    assert plan.attempts == 3 and [plan.delay_after(n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
