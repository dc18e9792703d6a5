"""What a task gives the engine: a model, data, one training step, one validation step, an export.

A task knows its model, batch, loss and validation metrics. It knows nothing
about devices, precision, DDP, checkpoints or logging: the engine does those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset


class Task(Protocol):
    name: str

    def build_model(self) -> torch.nn.Module:
        """The model to train; its trainable parameters are the ones with requires_grad."""

    def train_dataset(self) -> Dataset: ...

    def val_dataset(self) -> Dataset: ...

    def training_step(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of one micro-batch. Call `model(...)` (it may be DDP-wrapped)."""

    def validation_step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Sums over the batch (e.g. loss_sum, count, correct); the engine adds them over batches and ranks."""

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Turn summed totals into metrics (e.g. {'loss': loss_sum / count}); names get a 'val_' prefix."""

    def export(self, model: torch.nn.Module, folder: Path) -> None:
        """Write the Output[Model] folder from the (best) model."""

    def learning_rates(self) -> dict[str, float]:
        """Extra per-module learning rates by parameter-name prefix (may be empty)."""

    # Optional: `validation_images(model, count) -> Tensor | None`, float images in [0, 1]
    # that the engine logs to TensorBoard after each validation (rank 0 only, under a
    # forked RNG so sampling never changes the training random numbers).
    # Optional: `prompt_samples(model) -> training.prompt_samples.PromptSamples | None`, drawn at step 0 and every
    # train.validation_prompts_every steps (see trainflow.training.prompt_samples).
    # Optional: `compile_targets(model) -> list[nn.Module]`, what train.speed.compile compiles (default: the model).


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device, non_blocking) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device, non_blocking) for value in batch)
    return batch
