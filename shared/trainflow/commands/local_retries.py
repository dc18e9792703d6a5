"""Retries of a failed stage in a local run: a user error is not retried; any other failure is, with the backoff
the pipeline declares.

kfp.local 2.17 retries a task by its retry policy (pipelines/pipeline_settings.py: after 60 s, then 120 s, ...)
whatever its exit code, so a stage that failed with a user error (exit code 2: a bad config value, a missing
file) was run again minutes later before the user saw the error the first attempt had already shown. KFP's
retry policy has no exit-code filter, so for a run started here `stage_retries` takes that loop over: kfp.local
runs each attempt once (its `task_executor.execute_single_task` with the policy removed), the stage process's
exit code is kept (from `subprocess_task_handler.run_local_subprocess`), and an attempt that exited with
USER_ERROR_EXIT_CODE ends the stage at once. Any other failure waits the policy's delay and runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator

from trainflow.exit_codes import USER_ERROR_EXIT_CODE


@dataclasses.dataclass(frozen=True)
class RetryPlan:
    """How often a task runs and how long it waits between runs, from its KFP retry policy."""

    attempts: int
    backoff_seconds: float = 0.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 3600.0

    @classmethod
    def of(cls, task_spec: Any) -> "RetryPlan":
        """The plan kfp.local would follow for `task_spec` (a PipelineTaskSpec); the same defaults as kfp.local."""
        policy = task_spec.retry_policy
        return cls(
            attempts=1 + max(policy.max_retry_count, 0),
            backoff_seconds=policy.backoff_duration.seconds if policy.HasField("backoff_duration") else 0.0,
            backoff_factor=policy.backoff_factor if policy.backoff_factor > 0 else 2.0,
            max_backoff_seconds=(policy.backoff_max_duration.seconds if policy.HasField("backoff_max_duration")
                                 else 3600.0),
        )

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        return min(self.backoff_seconds * self.backoff_factor ** (attempt - 1), self.max_backoff_seconds)


AttemptStarts = Callable[[str, int, int], None]  # (stage, attempt, attempts)
AttemptFails = Callable[[str, int, int, float | None], None]  # (stage, attempt, attempts, delay or None: not retried)


def stage_name(task_name: str) -> str:
    """A KFP task name as the stage it runs (build-cache -> build_cache)."""
    return task_name.replace("-", "_")


@contextlib.contextmanager
def stage_retries(on_attempt: AttemptStarts, on_failure: AttemptFails,
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """While open, kfp.local runs every task through `RetryPlan`, skipping the retries of a user error.

    on_attempt(stage, n, total) is called before each attempt; on_failure(stage, n, total, delay) after a failed
    attempt, with the seconds until the next one or None when the stage is not retried (a user error, or the
    last attempt). Restores kfp.local's own functions on exit.
    """
    from kfp.local import status, subprocess_task_handler
    from kfp.local.orchestrator import task_executor

    run_task = task_executor.execute_single_task
    run_subprocess = subprocess_task_handler.run_local_subprocess
    exit_codes: list[int] = []

    def recording_subprocess(*args: Any, **kwargs: Any) -> int:
        code = run_subprocess(*args, **kwargs)
        exit_codes.append(code)
        return code

    def run_with_retries(*, task_name: str, task_spec: Any, **kwargs: Any) -> Any:
        plan = RetryPlan.of(task_spec)
        once = type(task_spec)()
        once.CopyFrom(task_spec)
        once.ClearField("retry_policy")
        stage = stage_name(task_name)
        for attempt in range(1, plan.attempts + 1):
            on_attempt(stage, attempt, plan.attempts)
            exit_codes.clear()
            outputs, task_status = run_task(task_name=task_name, task_spec=once, **kwargs)
            if task_status == status.Status.SUCCESS:
                return outputs, task_status
            user_error = bool(exit_codes) and exit_codes[-1] == USER_ERROR_EXIT_CODE
            if user_error or attempt == plan.attempts:
                on_failure(stage, attempt, plan.attempts, None)
                return outputs, task_status
            delay = plan.delay_after(attempt)
            on_failure(stage, attempt, plan.attempts, delay)
            sleep(delay)
        raise AssertionError("unreachable: the last attempt returns")

    task_executor.execute_single_task = run_with_retries
    subprocess_task_handler.run_local_subprocess = recording_subprocess
    try:
        yield
    finally:
        task_executor.execute_single_task = run_task
        subprocess_task_handler.run_local_subprocess = run_subprocess
