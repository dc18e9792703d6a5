from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.component_defaults import trainflow_component


@trainflow_component
def tune_summary(cache: Input[Dataset], run_config: dict, study_root: str, report: Output[HTML],
                 metrics: Output[Metrics], results: Output[Artifact]) -> NamedTuple("Best", model_config=dict, train_config=dict):
    """Read the finished study: report, headline metrics, and the best trial's model and train sections.

    report: HTML (optimisation history, parameter importances, slice plot, trial table with pruned/failed).
    metrics: the best trial's validation values and the trial counts.
    results: the study results as JSON (every trial, the best, the Pareto front for several objectives).
    Returns the `model` and `train` sections with the best trial's parameters, for the refit's train step.
    """
    from collections import namedtuple

    from trainflow.stages.runner import run_stage
    from trainflow.stages.tuning import tune_summary as stage

    best = run_stage(stage, cache_dir=cache.path, run_config=run_config, study_root=study_root, report=report,
                     metrics=metrics, results=results)
    return namedtuple("Best", ["model_config", "train_config"])(best["model_config"], best["train_config"])
