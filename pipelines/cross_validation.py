"""The cross-validation pipeline: ingest with k-fold splits, every fold in a ParallelFor, then aggregate.

ingest_split (folds.json) -> ParallelFor(folds × repeats, parallelism=cross_validation.workers):
    cross_validation_fold (train on the other folds, score the held-out one) -> aggregate_folds
"""

from kfp import dsl

from components.aggregate_folds.component import aggregate_folds
from components.cross_validation_fold.component import cross_validation_fold
from components.ingest_split.component import ingest_split
from pipelines.pipeline_settings import PodSettings, place

PIPELINE_NAME = "trainflow-cross-validation"


def build_cross_validation_pipeline(settings: PodSettings, fold_runs: int, parallelism: int):
    @dsl.pipeline(name=PIPELINE_NAME, description="K-fold cross-validation: every fold trained and scored in parallel; mean, std and interval.")
    def cross_validation_pipeline(seed: int, task: str, ingest_config: dict, run_config: dict):
        ingest_task = place(ingest_split(ingest_config=ingest_config, seed=seed, task=task).set_caching_options(False),
                            settings, cpu="2", memory="8G")
        with dsl.ParallelFor(items=list(range(fold_runs)), parallelism=parallelism) as index:
            fold = cross_validation_fold(dataset=ingest_task.outputs["dataset"], fold_index=index, run_config=run_config)
            place(fold, settings, cpu="8", memory="32G", gpu=True, shm=True, retries=2)
        summary = aggregate_folds(fold_results=dsl.Collected(fold.outputs["result"]), run_config=run_config)
        place(summary, settings, cpu="1", memory="4G")

    return cross_validation_pipeline


def _fold_config(config):
    from trainflow.experiments.cross_validation_run import with_fold_split

    return with_fold_split(config)


def pipeline_for(config):
    config = _fold_config(config)
    cv = config.cross_validation
    repeats, workers = (cv.repeats, cv.workers) if cv else (1, 1)
    return build_cross_validation_pipeline(PodSettings.for_config(config), config.ingest.split.folds * repeats, workers)


def pipeline_arguments(config, tracking_uri=None) -> dict:
    from trainflow.config import section_payload

    config = _fold_config(config)
    return {"seed": config.seed, "task": config.task, "ingest_config": section_payload(config.ingest),
            "run_config": section_payload(config)}
