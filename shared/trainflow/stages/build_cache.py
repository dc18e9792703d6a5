"""Stage 2: encode every image once through the VAE and every caption once through the text encoder."""

from __future__ import annotations

from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.config import CacheConfig, ModelConfig, parse_section
from trainflow.data.cache.supervised_cache import build_supervised_cache
from trainflow.devices import pick_device
from trainflow.data.cache.latent_cache_build import build_latent_cache


def build_cache(
    dataset_dir: str, model_config: dict[str, Any], config: dict[str, Any], cache: ArtifactLike,
    task: str = "text_to_image",
) -> dict[str, Any]:
    """Encode or decode every record once into the cache folder, for all three splits.

    text_to_image: `latents.h5` (see trainflow.data.cache.latent_cache), VAE posteriors
    and text embeddings, keyed by the dataset, the encoders and the storage dtype
    (trainflow.data.cache.latent_cache_build). Supervised tasks: `supervised.h5` and its shards (see
    trainflow.data.cache.supervised_cache), decoded uint8 images/masks or feature tables,
    keyed by the dataset and cache settings (reused and resumable under cache.cache_root).
    Inputs: the ingest_split Dataset folder, the `model` and `cache` config sections.
    Fails with MissingWeightsError when the base model cannot be found.
    """
    cfg: CacheConfig = parse_section(CacheConfig, config, "the cache section")
    if task != "text_to_image":
        # Keyed by dataset and settings: reused from cache.cache_root when they match, resumed when a build was killed.
        with timed_stage("build_cache", cache):
            cache.metadata.update(build_supervised_cache(dataset_dir, cache.path, cfg))
        return dict(cache.metadata)
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    # Keyed by dataset, encoders and dtype: reused from cache.cache_root, resumed shard by shard when killed.
    with timed_stage("build_cache", cache):
        cache.metadata.update(build_latent_cache(dataset_dir, cache.path, model_cfg, cfg, pick_device(cfg.device)))
    return dict(cache.metadata)
