"""Run a stage function from a component: a user error becomes one line and its own exit code.

Exit codes, so that whoever reads them (a person, a PyTorchJob's ExitCode restart policy, a
future KFP retry filter) can tell a user error from a crash:
- USER_ERROR_EXIT_CODE (2): a UserFacingError (bad config, missing data or weights); retrying
  cannot help. KFP 2.17's retry policy cannot filter on exit codes, so the pipelines also run a
  cheap `preflight` task without retries before any task that retries (pipelines/pipeline_settings.py);
- 1: any other exception, with its traceback (a bug, or an infrastructure failure);
- CANCELLED_EXIT_CODE (143 = 128 + SIGTERM): the pod was told to stop (run cancelled, node
  drained). SIGTERM is turned into SystemExit so `finally` blocks run: a launcher deletes its
  training job, atomic writers remove their temporary folders.
- PREEMPTED_EXIT_CODE (the same 143): SIGTERM while the training engine runs. The engine takes
  SIGTERM over from this module for its loop (trainflow.training.preemption): it finishes the
  optimizer step, writes a checkpoint within train.preemption.grace_seconds, then exits 143. It is
  retriable: a KFP retry re-runs the step, a PyTorchJob's ExitCode policy restarts pods on
  128-255, and either resumes from that checkpoint. Under torchrun the pod's own exit code is
  torchrun's: it forwards SIGTERM to its workers, waits for them, and exits 1.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, Callable

from trainflow.errors import UserFacingError

USER_ERROR_EXIT_CODE = 2
CANCELLED_EXIT_CODE = 128 + signal.SIGTERM
PREEMPTED_EXIT_CODE = CANCELLED_EXIT_CODE  # one "stopped by SIGTERM, retry me" code; see the docstring


def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    print("trainflow: received SIGTERM; stopping and cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(CANCELLED_EXIT_CODE)


def run_stage(stage: Callable[..., Any], **kwargs: Any) -> Any:
    """Call `stage(**kwargs)`; on UserFacingError print `trainflow: <stage> failed: <message>` and exit 2.

    Returns what the stage returns. SIGTERM while it runs raises SystemExit(143) in the stage.
    With TRAINFLOW_PUSHGATEWAY set, the stage's duration and outcome are pushed when it ends
    (trainflow.stages.outcome_metrics; a Pushgateway outage is one warning line, never a failure).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    except ValueError:  # not the main thread (e.g. a test calling a component's function): leave signals alone
        previous = None
    started, outcome = time.monotonic(), "failed"
    try:
        result = stage(**kwargs)
        outcome = "succeeded"
        return result
    except UserFacingError as exc:
        outcome = "user_error"
        print(f"trainflow: {stage.__name__} failed: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
    except SystemExit as exc:
        outcome = "cancelled" if exc.code == CANCELLED_EXIT_CODE else "failed"
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        from trainflow.stages.outcome_metrics import push_stage_outcome

        push_stage_outcome(stage.__name__, time.monotonic() - started, outcome)
