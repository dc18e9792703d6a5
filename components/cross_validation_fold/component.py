from kfp.dsl import Artifact, Dataset, Input, Output

from components.component_defaults import trainflow_component


@trainflow_component
def cross_validation_fold(dataset: Input[Dataset], fold_index: int, run_config: dict, result: Output[Artifact],
                          checkpoint_dir: str = ""):
    """Train on the other folds and score the held-out fold `fold_index` (repeats counted in) of folds.json.

    dataset: the ingest_split output with folds.json (k-fold split kinds).
    run_config: the whole run config (section_payload), with its cross_validation section.
    result: a folder with fold.json (the fold's metrics and sizes), predictions/ (held-out per-record outputs),
      model/ and the fold's cache.
    checkpoint_dir: '' = beside the result.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.cross_validation_fold import cross_validation_fold as stage

    run_stage(stage, dataset_dir=dataset.path, fold_index=fold_index, run_config=run_config, result=result,
              checkpoint_dir=checkpoint_dir)
