"""`trainflow tune` on this machine: split and cache once, run the study's workers, refit the best, evaluate, register.

    <state>/tuning/<study>/data/        the split and cache every trial reads (made once, reused on resume)
    <state>/tuning/<study>/journal.log  the study (or a database, tune.storage.kind: rdb)
    <state>/tuning/<study>/trials/      one folder per trial slot
    <state>/tuning/<study>/refit/       the final model: trained with the best trial's parameters, then the only
                                        model that meets the test split (evaluate), then the register gates

Re-running the same config continues the study: finished trials are kept, a trial a killed run left
running is re-queued and resumes from its checkpoints, and the study runs on to its budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainflow.artifacts import LocalArtifact
from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.config.tuning import apply_params, objective_directions
from trainflow.contained_paths import remove_inside, state_directory
from trainflow.errors import ConfigError, UserFacingError
from trainflow.experiments.samplers import check_sampler_installed
from trainflow.redaction import redact
from trainflow.experiments.study_results import study_results
from trainflow.experiments.study_storage import describe_storage, study_folder
from trainflow.experiments.trial_worker import STUDY_FILE, StudyRequest, load_study, run_worker, trial_budget, trial_output

INGEST_FACTS = "ingest.json"


@dataclasses.dataclass
class TuningResult:
    request: StudyRequest
    results: dict[str, Any]
    refit: dict[str, Any] | None
    report_path: Path | None


def prepare_data(config: RunConfig, data_dir: Path) -> tuple[Path, Path]:
    """(dataset folder, cache folder): ingest and cache once; an existing complete pair is reused."""
    from trainflow.data.cache.attrs import has_cache
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    dataset, cache = data_dir / "dataset", data_dir / "cache"
    if not (dataset / "manifest.jsonl").is_file() or not (data_dir / INGEST_FACTS).is_file():
        facts = ingest_split(section_payload(config.ingest), config.seed, LocalArtifact(str(dataset)),
                             LocalArtifact(str(data_dir / "ingest-report.md")), task=config.task,
                             model_base=config.model.base)
        atomic_write_json(data_dir / INGEST_FACTS, facts)
    if not has_cache(cache):
        build_cache(str(dataset), section_payload(config.model), section_payload(config.cache), LocalArtifact(str(cache)),
                    task=config.task)
    return dataset, cache


def start_study(config: RunConfig, state_dir: str | Path, fresh: bool = False) -> StudyRequest:
    """Prepare the data and write study.json; `fresh` deletes the study (folder and stored trials) first."""
    tune = config.tune
    if tune is None:
        raise ConfigError("tune: the config has no tune section; add one (see README, Experiments)")
    check_sampler_installed(tune)
    name = tune.study_name or config.run_name
    folder = study_folder(state_directory(state_dir), name)
    if fresh:
        _delete_study(config, folder, name)
    _, cache = prepare_data(config, folder / "data")
    # study.json is a file in the state directory: credentials in the tracking URI stay out (the refit registers
    # from the config in memory; trials do not register).
    request = StudyRequest(config=redact(section_payload(config)), cache_dir=str(cache), study_dir=str(folder),
                           study_name=name, seed=tune.seed if tune.seed is not None else config.seed)
    atomic_write_json(folder / STUDY_FILE, request.model_dump(mode="json"))
    return request


def _delete_study(config: RunConfig, folder: Path, name: str) -> None:
    import optuna

    assert config.tune is not None
    if config.tune.storage.kind == "rdb":
        from trainflow.experiments.study_storage import open_storage

        try:
            optuna.delete_study(study_name=name, storage=open_storage(config.tune, folder))
        except KeyError:
            pass  # no such study yet
    remove_inside(folder.parent, folder)


def run_workers(request: StudyRequest, workers: int, verbose: bool = False) -> None:
    """One worker here, or `workers` processes on the same study; UserFacingError if a worker process failed."""
    if workers == 1:
        run_worker(request, verbose=verbose)
        return
    command = [sys.executable, "-m", "trainflow.experiments.trial_worker", str(Path(request.study_dir) / STUDY_FILE)]
    processes = [subprocess.Popen(command + (["--verbose"] if verbose else [])) for _ in range(workers)]
    codes = [process.wait() for process in processes]
    if any(codes):
        raise UserFacingError(f"{sum(1 for c in codes if c)} of {workers} trial workers failed (exit codes "
                              f"{', '.join(str(c) for c in codes)}); see their lines above")


def refit_config(config: RunConfig, best: dict[str, Any]) -> RunConfig:
    """The run config with the best trial's parameters (and, for train_val, its epochs and no early stopping)."""
    assert config.tune is not None
    payload = apply_params(section_payload(config), best["params"])
    payload.pop("tune", None)
    if config.tune.refit == "train_val":
        epochs = max(1, math.ceil(float(best.get("best_epoch") or 1)))
        train = payload["train"]
        # Validation records are training records now: nothing is left to stop on, so train the epochs the
        # best trial needed, and keep the last weights (train_loss is the only honest monitor).
        train.update({"max_epochs": epochs, "max_steps": None})
        train["early_stopping"] = {"monitor": "train_loss", "patience": None}
        train = {k: v for k, v in train.items() if v is not None}
        payload["train"] = train
    return parse_section(RunConfig, payload, "the refit configuration")


def _refit_cache(config: RunConfig, request: StudyRequest, folder: Path) -> Path:
    if config.tune is None or config.tune.refit == "train":
        return Path(request.cache_dir)
    from trainflow.data.cache.attrs import has_cache
    from trainflow.experiments.resplit_dataset import write_train_val_refit_dataset
    from trainflow.stages.build_cache import build_cache

    dataset = Path(request.study_dir) / "data" / "dataset"
    cache = folder / "cache"
    if not has_cache(cache):
        write_train_val_refit_dataset(dataset, folder / "dataset")
        build_cache(str(folder / "dataset"), section_payload(config.model), section_payload(config.cache),
                    LocalArtifact(str(cache)), task=config.task)
    return cache


def refit_and_register(config: RunConfig, request: StudyRequest, results: dict[str, Any], state_dir: Path,
                       verbose: bool = False) -> dict[str, Any]:
    """Train the best configuration, evaluate it on the test split (its first use), and register it past the gates."""
    best = results["best"]
    final = refit_config(config, best)
    folder = Path(request.study_dir) / "refit" / f"trial-{best['number']:05d}-{config.tune.refit}"
    print(f"tune: refit: training trial {best['number']}'s configuration on {config.tune.refit.replace('_', '+')} "
          f"(log: {folder / 'refit.log'})", flush=True)
    with trial_output(folder / "refit.log", verbose):
        return _refit_stages(config, final, request, best, folder, state_dir)


def _refit_stages(config: RunConfig, final: RunConfig, request: StudyRequest, best: dict[str, Any], folder: Path,
                  state_dir: Path) -> dict[str, Any]:
    from trainflow.registry.tracking import default_tracking_uri
    from trainflow.stages.evaluate import evaluate
    from trainflow.stages.register_model import register_model
    from trainflow.stages.train import train

    cache = _refit_cache(config, request, folder)
    model = LocalArtifact(str(folder / "model"))
    train(final.task, str(cache), section_payload(final.model), section_payload(final.train), final.seed, model,
          LocalArtifact(str(folder / "train-metrics.json")), checkpoint_dir=str(folder / "checkpoints"))
    metrics = LocalArtifact(str(folder / "eval-metrics.json"))
    predictions = LocalArtifact(str(folder / "predictions"))
    evaluate(str(cache), model.path, section_payload(final.model), section_payload(final.evaluate), final.seed, metrics,
             task=final.task, report=LocalArtifact(str(folder / "evaluation.html")), predictions=predictions)
    register = section_payload(final.registration)
    register.setdefault("tracking_uri", default_tracking_uri(state_dir))
    ingest = json.loads((Path(request.study_dir) / "data" / INGEST_FACTS).read_text(encoding="utf-8"))
    params = {**section_payload(final), "tune_study": request.study_name, "tune_best_trial": best["number"],
              "tune_refit": config.tune.refit}
    report = LocalArtifact(str(folder / "registration.md"))
    registration = register_model(model.path, ingest, dict(metrics.metadata), {}, register, final.run_name, params,
                                  report, task=final.task, predictions_dir=predictions.path, cache_dir=str(cache),
                                  seed=final.seed, dataset_dir=str(Path(request.study_dir) / "data" / "dataset"))
    return {"folder": str(folder), "test_metrics": {k: v for k, v in metrics.metadata.items()
                                                    if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "registration": {k: registration.get(k) for k in ("registered", "model_name", "model_version", "reasons",
                                                               "mlflow_run_id", "tracking_uri")}}


def tune_locally(config: RunConfig, state_dir: str | Path = ".trainflow", fresh: bool = False, verbose: bool = False,
                 refit: bool = True) -> TuningResult:
    """Run (or continue) the config's study here, then refit, evaluate and register the best trial."""
    assert config.tune is not None
    state = Path(state_dir).resolve()
    request = start_study(config, state, fresh=fresh)
    tune = config.tune
    budget = trial_budget(tune)
    print(f"tune: study '{request.study_name}' in {describe_storage(tune, Path(request.study_dir))}; sampler "
          f"{tune.sampler}, budget {budget if budget is not None else 'unlimited'} trials"
          f"{f', {tune.wall_time_minutes:g} min per worker' if tune.wall_time_minutes else ''}, {tune.workers} worker(s)",
          flush=True)
    run_workers(request, tune.workers, verbose)
    study, _ = load_study(request)
    objectives = objective_directions(tune, config.train.early_stopping.monitor)
    results = study_results(study, objectives)
    atomic_write_json(Path(request.study_dir) / "results.json", results)
    from trainflow.experiments.mlflow_runs import log_study
    from trainflow.registry.tracking import default_tracking_uri

    tracking_uri = config.registration.tracking_uri or default_tracking_uri(state)
    results["mlflow_parent_run"] = log_study(tracking_uri, config.registration.experiment, results)
    refit_facts = None
    if refit and "best" in results:
        refit_facts = refit_and_register(config, request, results, state, verbose)
        results["refit"] = refit_facts
        atomic_write_json(Path(request.study_dir) / "results.json", results)
    return TuningResult(request, results, refit_facts, None)
