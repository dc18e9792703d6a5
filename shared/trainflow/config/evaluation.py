"""The `cache`, `evaluate` and `score` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainflow.config.names import PathText, PlainText
from trainflow.config.schema_base import Section


class CacheConfig(Section):
    batch_size: int = Field(16, ge=1, le=1_000_000)
    storage_dtype: Literal["float16", "float32"] = "float16"
    device: PlainText = "auto"
    # Supervised caches (trainflow.data.cache.supervised_cache): how the decoded records are stored.
    compression: Literal["none", "gzip", "lzf"] = Field("none", description="HDF5 filter; lzf is fast, gzip smaller.")
    compression_level: int = Field(4, ge=1, le=9, description="gzip only.")
    layout: Literal["chunked", "contiguous"] = Field(
        "chunked", description="contiguous (uncompressed) lets train.data_loading.mode memmap map the arrays directly.")
    chunk_kib: int = Field(64, ge=1, le=1_048_576, description="Target HDF5 chunk size; a chunk holds whole records.")
    shard_records: int = Field(50_000, ge=1, le=1_000_000_000, description="At most this many records per shard file.")
    shard_mb: float = Field(1024, gt=0, le=1e9, description="At most this many decoded megabytes per shard file.")
    cache_root: PathText | None = Field(
        None, description="A shared folder of caches keyed by their inputs: a run whose dataset and cache settings "
                          "match reuses the cache there, and a killed build resumes from its last complete shard. "
                          "Training must see this folder at the same path.")
    flip_latents: bool = Field(
        False, description="Text-to-image: also encode every train image mirrored left-right; each epoch training "
                           "uses the mirrored latents for a seeded half of the records (random horizontal flip, the "
                           "same on resume). Doubles the train split's encoding once; costs nothing per step. "
                           "Leave off when left and right matter (text in images, asymmetric subjects).")

    @model_validator(mode="after")
    def _contiguous_is_uncompressed(self) -> "CacheConfig":
        if self.layout == "contiguous" and self.compression != "none":
            raise ValueError("layout: contiguous stores arrays uncompressed; set compression: none or layout: chunked")
        return self


class EvaluateConfig(Section):
    batch_size: int = Field(32, ge=1, le=1_000_000)
    device: PlainText = "auto"
    bootstrap_resamples: int = Field(1000, ge=0, le=1_000_000, description="Seeded bootstrap resamples for 95% intervals; 0 turns intervals off.")
    score_last_checkpoint: bool = Field(True, description=(
        "Also score the last checkpoint (from the train stage's checkpoint folder), so the report shows what "
        "early stopping bought; reported as absent, with the reason, when that folder is not reachable."))


class FeatureExtractorConfig(Section):
    kind: Literal["inception", "classifier"] = "inception"
    # inception: optional explicit weights file (else TORCH_HOME's pytorch-fid file);
    # classifier: a trainflow classifier folder (config.json + model.safetensors).
    path: PathText | None = None

    @model_validator(mode="after")
    def _classifier_needs_path(self) -> "FeatureExtractorConfig":
        if self.kind == "classifier" and not self.path:
            raise ValueError("kind 'classifier' needs 'path' (a trainflow classifier folder)")
        return self


class GenerationConfig(Section):
    num_inference_steps: int = Field(30, ge=1, le=10_000)
    guidance_scale: float = Field(7.5, ge=1.0, le=1000)
    sampler: Literal["dpm_solver", "ddim", "ddpm"] = "dpm_solver"
    batch_size: int = Field(8, ge=1, le=1_000_000)
    max_prompts: int | None = Field(None, ge=2, le=10_000_000, description="Score on at most this many test captions.")


class ScoreConfig(Section):
    generation: GenerationConfig = GenerationConfig()
    fid_features: FeatureExtractorConfig = FeatureExtractorConfig()
    kid: bool = Field(True, description="Report KID (unbiased kernel distance, mean and std over 100 subsets) beside FID; "
                                        "FID is biased upwards for a few hundred images, KID is not.")
    reference_cache: PathText | None = Field(
        None, description="A folder keeping the real test images' features per feature extractor (its weights' digest) "
                          "and test-image content hash: a re-run on the same test split reuses them. On a cluster, a "
                          "folder on the workspace volume, e.g. /workspace/reference-features.")
    # Optional metrics: when their weights are missing they are reported as skipped.
    clip_model: PathText | None = Field(None, description="CLIP model folder or hub id, e.g. openai/clip-vit-large-patch14.")
    lpips: bool = True
    prompt_classifier: PathText | None = Field(None, description="Classifier folder for prompt accuracy (needs labels in the data).")
    compare_with_base: bool = True
    grid_size: int = Field(8, ge=1, le=64, description="Captions shown in the HTML sample grid.")
    device: PlainText = "auto"
