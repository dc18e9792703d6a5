"""Nested cross-validation: a study inside one outer fold, on that fold's training records only.

The fold's dataset already holds the outer fold's records as its test split, its training records as train
and an inner validation part as val (trainflow.experiments.cv_folds), so the study is the normal search on
that cache: trials train on train, are scored and pruned on the inner val, and never open the held-out fold.
The best trial's configuration (the study's refit rule) is what the fold then trains and scores, so the
folds' scores measure the whole procedure, tuning included. The study lives in <fold>/study/ and resumes
like any other after a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.config.tuning import apply_params, objective_directions
from trainflow.errors import UserFacingError


def tune_inside_fold(config: RunConfig, cache_dir: str, folder: Path, fold_name: str) -> tuple[RunConfig, dict[str, Any]]:
    """Run the inner study; (the fold's configuration with the best parameters, facts for the fold's record)."""
    from trainflow.experiments.samplers import check_sampler_installed
    from trainflow.experiments.study_results import study_results
    from trainflow.experiments.trial_worker import StudyRequest, load_study, run_worker

    tune = config.tune
    assert tune is not None
    check_sampler_installed(tune)
    study_dir = folder / "study"
    study_dir.mkdir(parents=True, exist_ok=True)
    request = StudyRequest(config=section_payload(config), cache_dir=cache_dir, study_dir=str(study_dir),
                           study_name=f"{tune.study_name or config.run_name}-{fold_name}",
                           seed=tune.seed if tune.seed is not None else config.seed)
    run_worker(request, worker=f"fold {fold_name}")
    study, _ = load_study(request)
    results = study_results(study, objective_directions(tune, config.train.early_stopping.monitor))
    atomic_write_json(study_dir / "results.json", results)
    best = results.get("best")
    if best is None:
        raise UserFacingError(f"fold {fold_name}: the inner study has no complete trial (every trial failed or was "
                              f"pruned; see {study_dir / 'results.json'}); widen tune.params or raise tune.trials")
    payload = apply_params(section_payload(config), best["params"])
    payload.pop("tune", None)
    payload["cross_validation"] = {**payload["cross_validation"], "nested": False}  # this fold's tuning is done
    tuned: RunConfig = parse_section(RunConfig, payload, f"fold {fold_name}'s best configuration")
    return tuned, {"tuned_params": best["params"], "inner_best": best["values"], "inner_best_trial": best["number"],
                   "inner_trials": {k: results["counts"][k] for k in ("complete", "pruned", "fail")}}
