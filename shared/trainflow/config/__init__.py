"""The one typed schema for a run's YAML, one module per section, and its loader.

Each pipeline stage receives only its own section (as a JSON dict, so it can
travel as a KFP parameter) and re-validates it with the matching model here,
which gives a cluster run the same clear errors as a local one.
"""

from trainflow.config.evaluation import CacheConfig, EvaluateConfig, FeatureExtractorConfig, GenerationConfig, ScoreConfig
from trainflow.config.ingest import IngestConfig, SplitFractions
from trainflow.config.model import ModelConfig
from trainflow.config.registration import Gate, RegisterConfig
from trainflow.config.run import RunConfig, check_task_fit, load_config
from trainflow.config.schema_base import Section, looks_like_local_path, parse_section, section_payload
from trainflow.config.training import (
    CheckpointConfig, DiffusionTrainingConfig, EarlyStoppingConfig, EmaConfig, LoraConfig, LossConfig,
    OptimizerConfig, PriorPreservationConfig, ScheduleConfig, TrainConfig,
)

__all__ = [
    "CacheConfig", "CheckpointConfig", "DiffusionTrainingConfig", "EarlyStoppingConfig", "EmaConfig",
    "EvaluateConfig", "FeatureExtractorConfig", "Gate", "GenerationConfig", "IngestConfig", "LoraConfig",
    "LossConfig", "ModelConfig", "OptimizerConfig", "PriorPreservationConfig", "RegisterConfig", "RunConfig", "ScheduleConfig",
    "ScoreConfig", "Section", "SplitFractions", "TrainConfig", "check_task_fit", "load_config",
    "looks_like_local_path", "parse_section", "section_payload",
]
