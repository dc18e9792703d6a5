"""Stage 2: encode or decode every record once into the task's cache, so training never decodes an image."""

from __future__ import annotations

from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.config import CacheConfig, ModelConfig, parse_section
from trainflow.tasks import get_task


def build_cache(
    dataset_dir: str, model_config: dict[str, Any], config: dict[str, Any], cache: ArtifactLike,
    task: str,
) -> dict[str, Any]:
    """Build the task's cache of the ingest_split Dataset folder into `cache`, for all three splits.

    The task decides the format (text_to_image: `latents.h5`, VAE posteriors and text embeddings,
    keyed by the dataset, the encoders and the storage dtype; supervised tasks: `supervised.h5` and
    its shards of decoded uint8 images/masks or feature tables, keyed by the dataset and cache
    settings). Both are reused from cache.cache_root when their key matches and resumed when a
    build was killed. Inputs: the Dataset folder, the `model` and `cache` config sections, the task.
    Fails with MissingWeightsError when an encoder the task needs cannot be found.
    """
    cfg: CacheConfig = parse_section(CacheConfig, config, "the cache section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    definition = get_task(task)
    with timed_stage("build_cache", cache):
        cache.metadata.update(definition.build_cache(dataset_dir, cache.path, model_cfg, cfg))
    return dict(cache.metadata)
