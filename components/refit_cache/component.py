from kfp.dsl import Dataset, Input, Output

from components.component_defaults import trainflow_component


@trainflow_component
def refit_cache(dataset: Input[Dataset], model_config: dict, cache_config: dict, task: str, cache: Output[Dataset]):
    """tune.refit: train_val: the refit's cache, with every validation record also in train (test unchanged).

    dataset: the ingest_split output the study's cache was built from.
    model_config, cache_config, task: as build_cache.
    cache: folder holding the HDF5 cache the refit trains on and the evaluate stage scores (its test split).
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.tuning import refit_cache as stage

    run_stage(stage, dataset_dir=dataset.path, model_config=model_config, cache_config=cache_config, task=task,
              cache=cache)
