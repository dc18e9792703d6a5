"""A trial worker: ask the shared study for trials and train each one until the budget is spent.

Any number of workers (processes on this machine, or pods of a ParallelFor) run `run_worker` on the same
study; the storage hands each trial to one worker only. A trial trains with the engine through the same
`train_from_request` as the train stage, in `trials/<slot>/`, reporting each validation to Optuna through the
engine's validation hook; a pruned trial stops there with stop kind `pruned`. Trials see the train and
val splits only: the task never opens the test split during a search.

    python -m trainflow.experiments.trial_worker STUDY_JSON [--verbose]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import Field

from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.config.schema_base import Section
from trainflow.config.tuning import TuneConfig, apply_params, objective_directions
from trainflow.errors import ConfigError, UserFacingError
from trainflow.experiments.samplers import build_pruner, build_sampler, pruning_step
from trainflow.experiments.search_space import grid_size, suggest_params
from trainflow.experiments.study_storage import open_storage
from trainflow.experiments.trial_claims import CONTINUES, Heartbeat, claim_trial, requeue_stale_trials, trial_folder

STUDY_FILE = "study.json"
DATASET_ATTR = "trainflow_dataset_sha256"


class StudyRequest(Section):
    """What every worker of one study reads (study.json on the workspace, or a component's parameters)."""

    config: dict[str, Any] = Field(description="The whole run config (section_payload of a RunConfig with a tune section).")
    cache_dir: str
    study_dir: str
    study_name: str
    seed: int


def load_study(request: StudyRequest) -> tuple[optuna.Study, RunConfig]:
    """Create or load the study; UserFacingError when an existing study was run on other data."""
    from trainflow.data.cache.attrs import read_cache_dataset_hash

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial says what happened
    config: RunConfig = parse_section(RunConfig, request.config, "the tuning request")
    tune = config.tune
    if tune is None:
        raise ConfigError("tune: the config has no tune section; add one (see README, Experiments)")
    directions = [direction for _, direction in objective_directions(tune, config.train.early_stopping.monitor)]
    study = optuna.create_study(
        storage=open_storage(tune, Path(request.study_dir)), study_name=request.study_name, load_if_exists=True,
        sampler=build_sampler(tune, request.seed, tune.workers), pruner=build_pruner(tune), directions=directions)
    dataset = read_cache_dataset_hash(request.cache_dir)
    known = study.user_attrs.get(DATASET_ATTR)
    if known is None:
        study.set_user_attr(DATASET_ATTR, dataset)
    elif known != dataset:
        raise UserFacingError(f"study {request.study_name!r} was run on other data (dataset {known[:12]}…, now "
                              f"{dataset[:12]}…); start it afresh (trainflow tune --fresh) or set another tune.study_name")
    return study, config


def trial_budget(tune: TuneConfig) -> int | None:
    """tune.trials, capped at the grid's size for a grid search (a grid has nothing more to try)."""
    if tune.sampler == "grid":
        return min(tune.trials or grid_size(tune), grid_size(tune))
    return tune.trials


def run_worker(request: StudyRequest, verbose: bool = False, worker: str = "worker") -> int:
    """Run trials until the budget or the wall time is spent; returns how many this worker ran."""
    study, config = load_study(request)
    tune = config.tune
    assert tune is not None
    study_dir = Path(request.study_dir)
    deadline = time.monotonic() + tune.wall_time_minutes * 60 if tune.wall_time_minutes else None
    budget, ran = trial_budget(tune), 0
    while deadline is None or time.monotonic() < deadline:
        for old, slot in requeue_stale_trials(study, study_dir, tune.stale_after_seconds):
            print(f"tune: trial {old} was left running by a stopped worker; re-queued to resume from trials/{slot:05d}",
                  flush=True)
        claim = claim_trial(study, budget)
        if claim is None:
            break
        trial, slot = claim
        run_trial(study, trial, slot, request, config, verbose, worker)
        ran += 1
    return ran


def _values_at_best(history: list[dict[str, float]], best_step: int | None, metrics: list[str]) -> list[float] | None:
    record = next((h for h in history if h["step"] == best_step), None)
    if record is None or any(not math.isfinite(record.get(m, math.nan)) for m in metrics):
        return None
    return [float(record[m]) for m in metrics]


def _validation_hook(trial: optuna.Trial, metric: str, single: bool):
    def hook(step: int, epoch: float, metrics: dict[str, float]) -> str | None:
        if not single:  # Optuna neither stores intermediate values nor prunes multi-objective trials
            return None
        trial.report(metrics[metric], pruning_step(epoch))
        if trial.should_prune():
            return f"trial {trial.number} pruned at step {step} (epoch {epoch:g}): {metric} {metrics[metric]:.5g}"
        return None
    return hook


def run_trial(study: optuna.Study, trial: optuna.Trial, slot: int, request: StudyRequest, config: RunConfig,
              verbose: bool, worker: str) -> TrialState:
    """Train one trial and tell the study how it ended (complete, pruned or failed, with why)."""
    from trainflow.stages.train import TRAINING_RECORD, TrainRequest, train_from_request

    tune = config.tune
    assert tune is not None
    objectives = objective_directions(tune, config.train.early_stopping.monitor)
    metrics = [metric for metric, _ in objectives]
    params = suggest_params(trial, tune, request.config)
    for step, value in trial.user_attrs.get("trainflow_reported", []):  # a continuation keeps what was reported
        trial.report(value, int(step))
    folder = trial_folder(Path(request.study_dir), slot)
    folder.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.monotonic(), time.process_time()
    try:
        trial_config: RunConfig = parse_section(RunConfig, apply_params(request.config, params), f"trial {trial.number}")
        train_request = TrainRequest.model_validate({
            "task": trial_config.task, "cache_dir": request.cache_dir, "seed": trial_config.seed,
            "model_config": section_payload(trial_config.model), "train_config": section_payload(trial_config.train),
            "checkpoint_dir": str(folder / "checkpoints"), "output_dir": str(folder / "model")})
        hook = _validation_hook(trial, metrics[0], len(metrics) == 1)
        with Heartbeat(folder, min(10.0, tune.stale_after_seconds / 4)), trial_output(folder / "train.log", verbose):
            summary = train_from_request(train_request, validation_hook=hook)
        record = json.loads((folder / "model" / TRAINING_RECORD).read_text(encoding="utf-8"))
    except UserFacingError as exc:
        return _finish(study, trial, TrialState.FAIL, None, params, {"error": str(exc)}, started, cpu_started, worker)
    facts = {"stop_kind": summary["stop_kind"], "stop_reason": summary["stop_reason"], "best_step": summary["best_step"],
             "best_epoch": summary["best_epoch"], "steps_run": summary["steps_run"],
             "validation": next((h for h in record["history"] if h["step"] == summary["best_step"]), {})}
    if summary["stop_kind"] == "pruned":
        return _finish(study, trial, TrialState.PRUNED, None, params, facts, started, cpu_started, worker)
    values = _values_at_best(record["history"], summary["best_step"], metrics)
    if values is None:
        facts["error"] = f"no finite {', '.join(metrics)} at the best step"
        return _finish(study, trial, TrialState.FAIL, None, params, facts, started, cpu_started, worker)
    return _finish(study, trial, TrialState.COMPLETE, values, params, facts, started, cpu_started, worker)


@contextlib.contextmanager
def trial_output(log_path: Path, verbose: bool):
    """The engine's per-validation lines (and the stages' own) go to `log_path` unless verbose."""
    if verbose:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None,
            params: dict[str, Any], facts: dict[str, Any], started: float, cpu_started: float, worker: str) -> TrialState:
    facts = {**facts, "seconds": round(time.monotonic() - started, 2),
             "cpu_seconds": round(time.process_time() - cpu_started, 2), "worker": worker}
    for key, value in facts.items():
        trial.set_user_attr(f"trainflow_{key}", value)
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    shown = " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())
    if state == TrialState.COMPLETE:
        outcome = "complete: " + ", ".join(f"{v:.5g}" for v in values or [])
    elif state == TrialState.PRUNED:
        outcome = f"pruned at step {facts.get('steps_run')}"
    else:
        outcome = f"failed: {facts.get('error')}"
    continues = trial.user_attrs.get(CONTINUES)
    again = f" (continues trial {continues})" if continues is not None else ""
    print(f"tune: trial {trial.number}{again} {outcome} | {shown} | {facts['seconds']:.1f} s", flush=True)
    return state


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    paths = [a for a in args if a != "--verbose"]
    if len(paths) != 1:
        print("usage: python -m trainflow.experiments.trial_worker STUDY_JSON [--verbose]", file=sys.stderr)
        return 2
    try:
        request = parse_section(StudyRequest, json.loads(Path(paths[0]).read_text(encoding="utf-8")), paths[0])
        run_worker(request, verbose=verbose, worker=f"process {os.getpid()}")
    except UserFacingError as exc:
        print(f"trainflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
