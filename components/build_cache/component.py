from kfp.dsl import Dataset, Input, Output

from components.component_defaults import trainflow_component


@trainflow_component
def build_cache(dataset: Input[Dataset], model_config: dict, cache_config: dict, cache: Output[Dataset]):
    """Encode every split once: VAE latent moments and text embeddings into HDF5.

    dataset: the ingest_split output.
    model_config: the `model` section (base pipeline folder or hub id).
    cache_config: the `cache` section (batch size, storage dtype, device).
    cache: folder holding latents.h5.
    """
    from trainflow.stage_runner import run_stage
    from trainflow.stages.build_cache import build_cache as stage

    run_stage(stage, dataset_dir=dataset.path, model_config=model_config, config=cache_config, cache=cache)
