"""`trainflow cross-validate` on this machine: ingest with k-fold splits once, train and score every fold, aggregate.

    <state>/cross-validation/<run_name>/data/dataset   the ingest output with folds.json
    <state>/cross-validation/<run_name>/folds/<r>-<f>/  each fold's dataset, cache, model, held-out predictions
    <state>/cross-validation/<run_name>/oof/           out-of-fold predictions (one folder per repeat)
    <state>/cross-validation/<run_name>/summary.json   per-fold table, mean/std/t-interval, pooled OOF metrics

A fold that finished is not trained again, so a re-run after a kill resumes at the first unfinished fold
(and inside it, from its checkpoints). With a second config (`compare`), both run on the same folds and each
headline metric gets the corrected resampled t-test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainflow.artifacts import LocalArtifact
from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.contained_paths import path_inside, remove_inside, state_directory
from trainflow.errors import ConfigError
from trainflow.tasks import get_task

KFOLD_KINDS = ("kfold", "stratified_kfold")


def with_fold_split(config: RunConfig) -> RunConfig:
    """The config with ingest.split cut into folds (kind and count from cross_validation, else defaults)."""
    payload = section_payload(config)
    split = payload["ingest"].setdefault("split", {})
    cv = config.cross_validation
    kind = (cv.kind if cv and cv.kind else split.get("kind") if split.get("kind") in KFOLD_KINDS
            else "stratified_kfold" if get_task(config.task).record_needs.classes_of == "labels" else "kfold")
    folds = (cv.folds if cv and cv.folds else config.ingest.split.folds or 5)
    split.update({"kind": kind, "folds": folds})
    return parse_section(RunConfig, payload, "the config with k-fold splits")


def _ingest(config: RunConfig, data_dir: Path) -> Path:
    from trainflow.stages.ingest_split import ingest_split

    dataset = data_dir / "dataset"
    if not (dataset / "folds.json").is_file():
        ingest_split(section_payload(config.ingest), config.seed, LocalArtifact(str(dataset)),
                     LocalArtifact(str(data_dir / "ingest-report.md")), task=config.task, model_base=config.model.base)
    return dataset


def cross_validate_locally(config: RunConfig, state_dir: str | Path = ".trainflow", fresh: bool = False,
                           verbose: bool = False) -> dict[str, Any]:
    """Run every fold (sequentially here; the pipeline fans them out) and return the summary."""
    from trainflow.experiments.cv_folds import fold_runs
    from trainflow.experiments.trial_worker import trial_output
    from trainflow.stages.cross_validation_fold import aggregate_folds, cross_validation_fold

    if not get_task(config.task).compares_per_record:
        raise ConfigError(f"task: cross-validation scores held-out folds record by record, which {config.task} does not support")
    config = with_fold_split(config)
    root = path_inside(state_directory(state_dir), "cross-validation", config.run_name)
    if fresh:
        remove_inside(state_dir, root)
    dataset = _ingest(config, root / "data")
    repeats = config.cross_validation.repeats if config.cross_validation else 1
    runs = fold_runs(dataset, config.ingest, repeats, config.seed)
    payload = section_payload(config)
    fold_dirs = []
    for index, run in enumerate(runs):
        folder = root / "folds" / run.name
        with trial_output(root / "logs" / f"{run.name}.log", verbose):
            facts = cross_validation_fold(str(dataset), index, payload, LocalArtifact(str(folder)))
        shown = ", ".join(f"{k} {facts['metrics'][k]:.4g}" for k in facts["metrics"] if k in ("accuracy", "f1_macro", "r2", "rmse", "mae", "mean_iou"))
        tuned = ("; tuned " + ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                                        for k, v in facts["tuned_params"].items())) if "tuned_params" in facts else ""
        print(f"cross-validate: repeat {run.repeat} fold {run.fold} ({len(run.train)} train, {len(run.val)} val, "
              f"{len(run.held_out)} held out): {shown}{tuned}", flush=True)
        fold_dirs.append(str(folder))
    summary = LocalArtifact(str(root / "summary.json"))
    results = aggregate_folds(fold_dirs, payload, summary, LocalArtifact(str(root / "oof")))
    results["folder"] = str(root)
    from trainflow.experiments.mlflow_runs import log_cross_validation
    from trainflow.registry.tracking import default_tracking_uri

    tracking_uri = config.registration.tracking_uri or default_tracking_uri(Path(state_dir).resolve())
    results["mlflow_parent_run"] = log_cross_validation(tracking_uri, config.registration.experiment, results)
    atomic_write_json(root / "summary.json", results)
    return results


def compare_configurations(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The corrected resampled t-test of A - B for each headline metric both summaries hold, fold by fold."""
    from trainflow.experiments.cv_statistics import corrected_resampled_ttest

    key = lambda f: (f["repeat"], f["fold"])  # noqa: E731
    folds_a, folds_b = sorted(a["folds"], key=key), sorted(b["folds"], key=key)
    if [key(f) for f in folds_a] != [key(f) for f in folds_b] or \
            [f["n_held_out"] for f in folds_a] != [f["n_held_out"] for f in folds_b]:
        raise ConfigError("--compare: the two configs were cut into different folds; give them the same ingest "
                          "section, seed and cross_validation folds/repeats")
    n_train = sum(f["n_train"] + f["n_val"] for f in folds_a) / len(folds_a)
    n_test = sum(f["n_held_out"] for f in folds_a) / len(folds_a)
    return {name: corrected_resampled_ttest([f["metrics"][name] for f in folds_a], [f["metrics"][name] for f in folds_b],
                                            n_train, n_test)
            for name in a["metrics"] if name in b["metrics"]}
