"""What trainflow's processes exit with, so that whoever reads it (a person, KFP, a PyTorchJob's ExitCode
restart policy, the local runner) can tell a user error from a crash from a stop that a retry resumes.

- USER_ERROR_EXIT_CODE (2): a UserFacingError (bad config, missing data or weights); retrying
  cannot help. KFP 2.17's retry policy cannot filter on exit codes, so the pipelines also run a
  cheap `preflight` task without retries before any task that retries (pipelines/pipeline_settings.py);
- SERVICE_UNAVAILABLE_EXIT_CODE (3): a ServiceUnavailableError, a server the stage needs (the
  MLflow tracking store) did not answer after the stage's own retries. One sentence like a user
  error, but retriable: the task's retry policy runs it again after its backoff.
- 1: any other exception, with its traceback (a bug, or an infrastructure failure);
- CANCELLED_EXIT_CODE (143 = 128 + SIGTERM): the pod was told to stop (run cancelled, node
  drained). SIGTERM is turned into SystemExit so `finally` blocks run: a launcher deletes its
  training job, atomic writers remove their temporary folders.
- PREEMPTED_EXIT_CODE (the same 143): SIGTERM while the training engine runs. The engine takes
  SIGTERM over from the stage runner for its loop (trainflow.training.preemption): it finishes the
  optimizer step, writes a checkpoint within train.preemption.grace_seconds, then exits 143. It is
  retriable: a KFP retry re-runs the step, a PyTorchJob's ExitCode policy restarts pods on
  128-255, and either resumes from that checkpoint. Under torchrun the pod's own exit code is
  torchrun's: it forwards SIGTERM to its workers, waits for them, and exits 1.
"""

from __future__ import annotations

import signal

USER_ERROR_EXIT_CODE = 2
SERVICE_UNAVAILABLE_EXIT_CODE = 3
CANCELLED_EXIT_CODE = 128 + signal.SIGTERM
PREEMPTED_EXIT_CODE = CANCELLED_EXIT_CODE  # one "stopped by SIGTERM, retry me" code; see above
