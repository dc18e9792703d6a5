"""The `model` section: a diffusers base pipeline, or a supervised architecture by name."""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Le
from pydantic import Field

from trainflow.config.names import PathText
from trainflow.config.schema_base import Section
from trainflow.config.task_fields import task_field
from trainflow.config.text_encoder import TextEncoderConfig


class ModelConfig(Section):
    # Text-to-image: the base diffusers pipeline.
    base: PathText | None = Field(None, description="Base diffusers pipeline: a local folder or a Hugging Face hub id (resolved through HF_HOME).")
    revision: PathText | None = None
    family: Literal["auto", "sd", "sdxl"] = Field(
        "auto", description="Text-to-image: the base's architecture, read from its model_index.json (auto); naming "
                            "sd (StableDiffusionPipeline) or sdxl (StableDiffusionXLPipeline) makes a mismatched base "
                            "an error before anything runs.")
    # Supervised tasks: an architecture by name.
    architecture: str | None = Field(
        None, description="small_cnn, mlp, seg_cnn, or a torchvision model name such as resnet18 / fcn_resnet50.")
    pretrained: bool = Field(False, description="torchvision architectures: start from ImageNet weights in TORCH_HOME (never downloaded).")
    weights_path: PathText | None = Field(None, description="Explicit pretrained weights file (.safetensors or a torchvision .pth state dict).")
    hidden_sizes: list[Annotated[int, Ge(1), Le(65536)]] = Field([128, 64], max_length=64, description="mlp: hidden layer widths.")
    width: int = Field(32, ge=4, le=4096, description="small_cnn / seg_cnn: channels of the first stage.")
    dropout: float = Field(0.0, ge=0, lt=1)
    # text_classification: the transformers encoder under the classification head (default: a small built one).
    text_encoder: TextEncoderConfig | None = task_field(None, elsewhere="applies to text_classification only, not {task}")
