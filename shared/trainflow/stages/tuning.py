"""Tuning stages for the cluster pipeline: one trial worker, the study's summary with the refit's configuration,
and (tune.refit: train_val) the cache the refit trains on.

The study lives under `<study_root>/tuning/<study name>/` (the workspace PVC on a cluster), so every worker of
the ParallelFor, a retried worker, and a re-submitted run of the same config find the same journal and trial
folders: finished trials are kept and a killed worker's trial is re-queued (see trainflow.experiments.trial_claims).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.config.tuning import objective_directions
from trainflow.errors import ConfigError


def _request(cache_dir: str, run_config: dict[str, Any], study_root: str):
    from trainflow.experiments.study_storage import study_folder
    from trainflow.experiments.trial_worker import StudyRequest

    config: RunConfig = parse_section(RunConfig, run_config, "the tuning config")
    if config.tune is None:
        raise ConfigError("tune: the config has no tune section; add one (see README, Experiments)")
    name = config.tune.study_name or config.run_name
    request = StudyRequest(config=section_payload(config), cache_dir=cache_dir,
                           study_dir=str(study_folder(study_root, name)), study_name=name,
                           seed=config.tune.seed if config.tune.seed is not None else config.seed)
    return config, request


def tune_trials(cache_dir: str, run_config: dict[str, Any], study_root: str, worker: int) -> int:
    """Ask the shared study for trials and train them until the budget is spent; returns how many ran here."""
    from trainflow.experiments.trial_worker import run_worker

    _, request = _request(cache_dir, run_config, study_root)
    Path(request.study_dir).mkdir(parents=True, exist_ok=True)
    return run_worker(request, worker=f"pipeline worker {worker}")


def tune_summary(cache_dir: str, run_config: dict[str, Any], study_root: str, report: ArtifactLike,
                 metrics: ArtifactLike, results: ArtifactLike) -> dict[str, Any]:
    """The study's results (JSON), an HTML report and headline metrics; returns the best trial's model/train sections."""
    from types import SimpleNamespace

    from trainflow.experiments.study_results import study_results
    from trainflow.experiments.trial_worker import load_study
    from trainflow.experiments.tuning_report import write_tuning_report

    config, request = _request(cache_dir, run_config, study_root)
    with timed_stage("tune_summary", report, metrics, results):
        study, _ = load_study(request)
        summary = study_results(study, objective_directions(config.tune, config.train.early_stopping.monitor))
        if "best" not in summary:
            raise ConfigError(f"study {request.study_name!r} has no complete trial; see the trial table in its "
                              "results (every trial failed or was pruned): widen tune.params or raise the budget")
        atomic_write_json(results.path, summary)
        folder = Path(report.path).parent / "tuning-report"
        html_path = write_tuning_report(SimpleNamespace(results=summary), folder)
        Path(report.path).write_text(html_path.read_text(encoding="utf-8"), encoding="utf-8")
        best = summary["best"]
        metrics.metadata.update({f"best_{k}": v for k, v in best["values"].items()})
        metrics.metadata.update({"best_trial": best["number"], "trials_complete": summary["counts"]["complete"],
                                 "trials_pruned": summary["counts"]["pruned"], "trials_failed": summary["counts"]["fail"]})
    from trainflow.experiments.tuning_run import refit_config

    final = refit_config(config, best)  # tune.refit train_val: the best trial's epochs, no stopping on val
    return {"model_config": section_payload(final.model), "train_config": section_payload(final.train)}


def refit_cache(dataset_dir: str, model_config: dict[str, Any], cache_config: dict[str, Any], task: str,
                cache: ArtifactLike) -> None:
    """tune.refit train_val: the cache the refit trains on, with every val record also in train (test unchanged).

    The re-split dataset links the ingest output's images, so it is built and read here, in one pod; only the
    cache (self-contained) leaves as the artifact.
    """
    import tempfile

    from trainflow.experiments.resplit_dataset import write_train_val_refit_dataset
    from trainflow.stages.build_cache import build_cache

    with tempfile.TemporaryDirectory(prefix="refit-dataset-") as scratch:
        counts = write_train_val_refit_dataset(dataset_dir, Path(scratch) / "dataset")
        build_cache(str(Path(scratch) / "dataset"), model_config, cache_config, cache, task=task)
    cache.metadata.update({f"refit_{split}_records": n for split, n in counts.items()})
