"""Run a stage function from a component: a user error becomes one line and its own exit code.

The codes (trainflow.exit_codes): 2 for a UserFacingError (retrying cannot help), 3 for a
ServiceUnavailableError (a server did not answer; the retry policy runs the stage again), 1 for any other
exception (with its traceback), 143 when SIGTERM stopped the stage (turned into SystemExit so
`finally` blocks run: a launcher deletes its training job, atomic writers remove their temporary
folders; the training engine takes SIGTERM over for its loop and checkpoints first).
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from typing import Any, Callable

from trainflow.errors import ServiceUnavailableError, UserFacingError
from trainflow.exit_codes import CANCELLED_EXIT_CODE, SERVICE_UNAVAILABLE_EXIT_CODE, USER_ERROR_EXIT_CODE
from trainflow.redaction import redact_text



def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    print("trainflow: received SIGTERM; stopping and cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(CANCELLED_EXIT_CODE)


def run_stage(stage: Callable[..., Any], **kwargs: Any) -> Any:
    """Call `stage(**kwargs)`; on UserFacingError print `trainflow: <stage> failed: <message>` and exit 2.

    Returns what the stage returns. SIGTERM while it runs raises SystemExit(143) in the stage. Any other
    exception keeps its traceback; one that shows credentials (a URI's user:password) is printed masked
    and exits 1. User errors are masked the same way (trainflow.redaction).
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
        unavailable = isinstance(exc, ServiceUnavailableError)
        outcome = "unavailable" if unavailable else "user_error"
        print(f"trainflow: {stage.__name__} failed: {redact_text(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(SERVICE_UNAVAILABLE_EXIT_CODE if unavailable else USER_ERROR_EXIT_CODE) from None
    except SystemExit as exc:
        outcome = "cancelled" if exc.code == CANCELLED_EXIT_CODE else "failed"
        raise
    except Exception:  # a bug or an infrastructure failure: Python prints its traceback, unless credentials are in it
        shown = traceback.format_exc()
        if redact_text(shown) == shown:
            raise
        print(redact_text(shown), file=sys.stderr, end="", flush=True)
        raise SystemExit(1) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        from trainflow.stages.outcome_metrics import push_stage_outcome

        push_stage_outcome(stage.__name__, time.monotonic() - started, outcome)
