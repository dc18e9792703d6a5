"""Stop cleanly on SIGTERM: finish the optimizer step, write a checkpoint within the grace budget, exit retriable.

A pod that is evicted, drained or preempted gets SIGTERM, then SIGKILL after its grace
period. While the engine trains, SIGTERM only sets a flag; the loop reads it at the next
optimizer-step boundary, so no step is left half done:

    SIGTERM -> finish the step in progress -> (validation and checkpoint due at that step, as usual)
            -> a checkpoint of that step, if the last checkpoint's write time fits in what is left of
               train.preemption.grace_seconds (a write cut off by SIGKILL would be lost anyway; the
               previous checkpoint stays, since writes are atomic)
            -> raise TrainingPreempted: SystemExit(143), which `trainflow.exit_codes` documents as
               retriable; the retried run resumes from that checkpoint exactly.

Under torchrun the ranks must stop at the same step (a rank that stops alone would leave the
others waiting in a collective). The flag rides in the all-reduce of the step's loss that every
step already does, so agreeing costs no extra collective: every rank sees the sum at the same
step. A second SIGTERM stops at once (SystemExit(143), like `stage_runner`'s handler).

Outside the training loop (setup, export) SIGTERM keeps whatever handler was there before.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import torch

from trainflow.config.training import PreemptionConfig
from trainflow.exit_codes import PREEMPTED_EXIT_CODE
from trainflow.training import distributed as dist_env


class TrainingPreempted(SystemExit):
    """Training stopped on SIGTERM at `step` (its checkpoint written when the budget allowed); exit code 143."""

    def __init__(self, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class PreemptionWatch:
    """Turns SIGTERM into a flag while training runs (a context manager); the ranks agree on it at step ends."""

    def __init__(self, cfg: PreemptionConfig, info: dist_env.ProcessInfo) -> None:
        self.grace_seconds = cfg.grace_seconds
        self.info = info
        self.received_at: float | None = None  # monotonic time of this process's first SIGTERM
        self.stop_agreed = False  # some rank got SIGTERM by the last step's all-reduce
        self.elapsed = 0.0  # seconds since the first SIGTERM on the slowest rank, at the last budget check
        self._previous: Any = None

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        if self.received_at is not None:
            print("train: second SIGTERM; stopping now without a checkpoint", file=sys.stderr, flush=True)
            raise SystemExit(PREEMPTED_EXIT_CODE)
        self.received_at = time.monotonic()
        print(f"train: SIGTERM received (rank {self.info.rank}); stopping after this optimizer step, with a "
              f"checkpoint if it fits in {self.grace_seconds:g} s", file=sys.stderr, flush=True)

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over ranks; the same all-reduce carries the stop flag (see `stop_agreed`)."""
        flag = torch.ones_like(loss) if self.received_at is not None else torch.zeros_like(loss)
        totals = dist_env.all_reduce_sum(torch.stack([loss, flag]), self.info)
        self.stop_agreed = self.stop_agreed or bool(totals[1].item() > 0)
        return totals[0] / self.info.world_size

    def checkpoint_fits(self, checkpoint_seconds: float, device: torch.device) -> bool:
        """Whether the slowest rank still has `checkpoint_seconds` (the last write's time) left of its budget.

        The same answer on every rank (an all-reduce of the maximum): they write, or skip, the checkpoint together.
        """
        elapsed = time.monotonic() - self.received_at if self.received_at is not None else 0.0
        worst = dist_env.all_reduce_max(torch.tensor([elapsed, checkpoint_seconds], dtype=torch.float64, device=device),
                                        self.info)
        self.elapsed = float(worst[0])
        return float(worst[0] + worst[1]) <= self.grace_seconds

    def stop_line(self, step: int, written: bool, checkpoint_seconds: float) -> str:
        """What the person watching reads when training stops on SIGTERM after `step`."""
        if written:
            return (f"train: stopped on SIGTERM after step {step}; checkpoint step-{step:09d} written, so a retry "
                    f"resumes there (exit code {PREEMPTED_EXIT_CODE})")
        return (f"train: stopped on SIGTERM after step {step} without a new checkpoint ({self.elapsed:.1f} s of the "
                f"{self.grace_seconds:g} s grace budget gone, the last write took {checkpoint_seconds:.1f} s); a retry "
                f"resumes from the previous one (exit code {PREEMPTED_EXIT_CODE})")
