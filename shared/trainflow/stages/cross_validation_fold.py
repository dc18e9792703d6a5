"""Cross-validation stages: train and score one fold; aggregate the folds.

`cross_validation_fold` turns fold i of the plan (see trainflow.experiments.cv_folds) into a Dataset folder
(train, an inner val for early stopping, the held-out fold as its test split), caches it, trains through
the train stage and scores the held-out fold through the evaluate stage, so every fold is the normal
path on other records. With cross_validation.nested, a study on the fold's cache chooses the configuration
first (trainflow.experiments.nested_tuning). `aggregate_folds` reads the folds' results and writes the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, LocalArtifact, timed_stage
from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig, parse_section, section_payload

from trainflow.experiments.cv_aggregate import FOLD_RESULT


def cross_validation_fold(dataset_dir: str, fold_index: int, run_config: dict[str, Any], result: ArtifactLike,
                          checkpoint_dir: str = "") -> dict[str, Any]:
    """Train and score fold `fold_index` (repeats counted in) of the dataset's folds.json into `result` (a folder).

    result/fold.json holds the fold's test-side metrics and sizes; result/predictions the per-record outputs
    of its held-out records. A completed fold (fold.json present) is returned as it is, so a re-run resumes.
    """
    from trainflow.experiments.cv_folds import fold_runs
    from trainflow.experiments.resplit_dataset import write_resplit_dataset
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.evaluate import evaluate
    from trainflow.stages.train import train

    config: RunConfig = parse_section(RunConfig, run_config, "the cross-validation config")
    folder = Path(result.path)
    done = folder / FOLD_RESULT
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    cv = config.cross_validation
    runs = fold_runs(dataset_dir, config.ingest, cv.repeats if cv else 1, config.seed)
    run = runs[fold_index]
    with timed_stage("cross_validation_fold", result):
        write_resplit_dataset(dataset_dir, folder / "dataset", run.splits_of())
        cache = LocalArtifact(str(folder / "cache"))
        build_cache(str(folder / "dataset"), section_payload(config.model), section_payload(config.cache), cache,
                    task=config.task)
        tuning: dict[str, Any] = {}
        if cv is not None and cv.nested:
            from trainflow.experiments.nested_tuning import tune_inside_fold

            config, tuning = tune_inside_fold(config, cache.path, folder, run.name)
        model = LocalArtifact(str(folder / "model"))
        train(config.task, cache.path, section_payload(config.model), section_payload(config.train), config.seed, model,
              LocalArtifact(str(folder / "train-metrics.json")),
              checkpoint_dir=checkpoint_dir or str(folder / "checkpoints"))
        metrics = LocalArtifact(str(folder / "metrics.json"))
        evaluate(cache.path, model.path, section_payload(config.model), section_payload(config.evaluate), config.seed,
                 metrics, task=config.task, predictions=LocalArtifact(str(folder / "predictions")))
    numbers = {k: v for k, v in metrics.metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    facts = {"repeat": run.repeat, "fold": run.fold, "n_train": len(run.train), "n_val": len(run.val),
             "n_held_out": len(run.held_out), "metrics": numbers, "stop_reason": metrics.metadata.get("stop_reason"),
             "best_step": metrics.metadata.get("best_step"), **tuning}
    atomic_write_json(done, facts)
    result.metadata.update({"repeat": run.repeat, "fold": run.fold, **numbers})
    return facts


def aggregate_folds(fold_dirs: list[str], run_config: dict[str, Any], summary: ArtifactLike,
                    oof_predictions: ArtifactLike) -> dict[str, Any]:
    """Mean, std and t-interval of each headline metric across folds; out-of-fold predictions per repeat."""
    from trainflow.experiments.cv_aggregate import aggregate

    config: RunConfig = parse_section(RunConfig, run_config, "the cross-validation config")
    with timed_stage("aggregate_folds", summary, oof_predictions):
        results = aggregate([Path(d) for d in fold_dirs], config, Path(oof_predictions.path))
        atomic_write_json(summary.path, results)
        summary.metadata.update({f"{name}_{stat}": value for name, row in results["metrics"].items()
                                 for stat, value in row.items() if stat in ("mean", "std", "ci_low", "ci_high")})
    return results
