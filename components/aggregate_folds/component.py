from typing import List

from kfp.dsl import Artifact, Input, Metrics, Output

from components.component_defaults import trainflow_component


@trainflow_component
def aggregate_folds(fold_results: Input[List[Artifact]], run_config: dict, summary: Output[Metrics],
                    oof_predictions: Output[Artifact]):
    """Mean, standard deviation and t-interval of each headline metric across the folds.

    fold_results: every cross_validation_fold result (dsl.Collected over the ParallelFor).
    summary: the numbers in metadata (<metric>_mean, _std, _ci_low, _ci_high); the file holds the per-fold table.
    oof_predictions: out-of-fold per-record predictions, one folder per repeat.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.cross_validation_fold import aggregate_folds as stage

    run_stage(stage, fold_dirs=[a.path for a in fold_results], run_config=run_config, summary=summary,
              oof_predictions=oof_predictions)
