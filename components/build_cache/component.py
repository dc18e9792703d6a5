from kfp.dsl import Dataset, Input, Output

from components.component_defaults import trainflow_component


@trainflow_component
def build_cache(dataset: Input[Dataset], model_config: dict, cache_config: dict, task: str, cache: Output[Dataset]):
    """Encode or decode every record once, for all three splits.

    dataset: the ingest_split output.
    model_config: the `model` section (text_to_image: base pipeline folder or hub id).
    cache_config: the `cache` section (batch size, storage dtype, device).
    task: text_to_image writes VAE latents and text embeddings (latents.h5); supervised
      tasks write decoded uint8 images/masks or feature tables (supervised.h5).
    cache: folder holding the HDF5 cache.
    """
    from trainflow.stages.runner import run_stage
    from trainflow.stages.build_cache import build_cache as stage

    run_stage(stage, dataset_dir=dataset.path, model_config=model_config, config=cache_config, cache=cache, task=task)
