"""Which trial a worker runs next: the budget, heartbeats, and re-queueing the trials of killed workers.

Every trial has a *slot*: its own number, or, for a trial that continues a killed one, the killed trial's
slot. The slot names the trial's folder (`trials/<slot>/`), so a continuation resumes from the killed
trial's checkpoints. Budget: the slots of counted trials (all but superseded and over-budget ones) are
ranked; a worker that asked for a trial whose slot ranks past `tune.trials` marks it over budget and
stops, so N workers asking at once never overshoot.

Liveness: a worker rewrites `trials/<slot>/heartbeat.json` (host, pid, time) every few seconds while a
trial runs. Optuna 5's journal storage has no heartbeat of its own (only RDBStorage does), so this file is
ours and works for both storages. A running trial is stale when its worker's process is gone (same host) or
its heartbeat is older than `tune.stale_after_seconds`; it is failed (one worker wins the state change: the
storage refuses to finish a finished trial) and its parameters enqueued as a continuation.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from trainflow.atomic_files import atomic_write_json

SLOT = "trainflow_slot"
CONTINUES = "trainflow_continues_trial"
STALE = "trainflow_stale"
OVER_BUDGET = "trainflow_over_budget"
HEARTBEAT_FILE = "heartbeat.json"


def trial_folder(study_dir: Path, slot: int) -> Path:
    return study_dir / "trials" / f"{slot:05d}"


def slot_of(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.user_attrs.get(SLOT, trial.number))


def is_counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial takes a place in the budget (a stale trial's place passes to its continuation)."""
    return not trial.user_attrs.get(STALE) and not trial.user_attrs.get(OVER_BUDGET)


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if is_counted(t) and t.state.is_finished())


class Heartbeat:
    """A thread that rewrites the trial's heartbeat file until stopped (a context manager)."""

    def __init__(self, folder: Path, every_seconds: float) -> None:
        self.path, self.every = folder / HEARTBEAT_FILE, every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trial-heartbeat", daemon=True)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> "Heartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, study_dir: Path, stale_after: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    path = trial_folder(study_dir, slot_of(trial)) / HEARTBEAT_FILE
    try:
        beat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        beat = None
    if beat is None:  # killed between ask and its first heartbeat: judge by when it started
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > stale_after
    if beat.get("host") == socket.gethostname() and not _process_alive(int(beat.get("pid", 0))):
        return True
    return now - float(beat.get("time", 0)) > stale_after


def requeue_stale_trials(study: optuna.Study, study_dir: Path, stale_after: float) -> list[tuple[int, int]]:
    """Fail each stale running trial and enqueue its parameters as a continuation; [(old number, slot)]."""
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(STALE) or not is_stale(trial, study_dir, stale_after):
            continue
        storage = study._storage  # the public API has no "fail this trial"; fail_stale_trials does the same
        try:
            storage.set_trial_user_attr(trial._trial_id, STALE, True)
            won = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker re-queued it first
        if not won:
            continue
        slot = slot_of(trial)
        study.enqueue_trial(trial.params, user_attrs={SLOT: slot, CONTINUES: trial.number,
                                                      "trainflow_reported": _reported(trial)},
                            skip_if_exists=False)
        requeued.append((trial.number, slot))
    return requeued


def _reported(trial: optuna.trial.FrozenTrial) -> list[list[float]]:
    return [[int(step), float(value)] for step, value in sorted(trial.intermediate_values.items())]


def claim_trial(study: optuna.Study, budget: int | None) -> tuple[optuna.Trial, int] | None:
    """Ask for the next trial; None (and the trial marked over budget) when its slot ranks past the budget."""
    # A queued continuation is always taken (it holds a slot already); otherwise stop once every place is taken.
    if budget is not None and not _waiting_count(study) and finished_count(study) + _running_count(study) >= budget:
        return None
    trial = study.ask()
    slot = int(trial.user_attrs.get(SLOT, trial.number))
    if SLOT not in trial.user_attrs:
        trial.set_user_attr(SLOT, slot)
    if budget is None:
        return trial, slot
    earlier = sum(1 for t in study.get_trials(deepcopy=False)
                  if is_counted(t) and t.number != trial.number and slot_of(t) < slot)
    if earlier >= budget:
        trial.set_user_attr(OVER_BUDGET, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial, slot


def _running_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_counted(t))


def _waiting_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
