"""The engine's side of a task's prompt samples (text-to-image validation prompts): when to draw, what to keep.

A task that defines `prompt_samples(model) -> PromptSamples | None` gets them drawn at step 0 (the weights
training starts from) and then every `train.validation_prompts_every` optimizer steps (unset: at each
validation). Their metrics are logged as `val_<name>` beside the validation metrics of the same step (so
early stopping may monitor them) and kept per step; the first and the latest image grids are kept for the
evaluation report. All of it is saved in every checkpoint, so a resumed run reports as an uninterrupted one.
The task draws from its own seeded generators; the engine also forks the global RNG around the call.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import Any, Callable

import torch

from trainflow.training import distributed as dist_env


@dataclasses.dataclass
class PromptSamples:
    images: torch.Tensor  # (N, 3, H, W) floats in [0, 1], one per prompt, in prompt order
    metrics: dict[str, float]  # e.g. {"prompt_accuracy": 0.9}; logged as val_<name>
    prompts: list[str]


def grid_of(images: torch.Tensor) -> torch.Tensor:
    """One row of images as a uint8 (3, H, W) grid (what TensorBoard and the report show)."""
    from torchvision.utils import make_grid

    return (make_grid(images.float().clamp(0, 1), nrow=len(images), padding=2) * 255).round().to(torch.uint8)


def png_data_uri(grid: torch.Tensor) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PromptSampleLog:
    """When prompt samples are due, and their history and grids (first and latest) for checkpoints and the report."""

    def __init__(self, task: Any, every: int | None, info: dist_env.ProcessInfo) -> None:
        self.draw: Callable[[torch.nn.Module], PromptSamples | None] | None = getattr(task, "prompt_samples", None)
        self.every, self.info = every, info
        self.history: list[dict[str, float]] = []
        self.grids: dict[str, tuple[int, torch.Tensor]] = {}  # "first" / "latest" -> (step, uint8 grid)
        self.prompts: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.draw is not None

    def due(self, step: int, validating: bool) -> bool:
        if not self.enabled:
            return False
        return validating if self.every is None else step % self.every == 0

    def take(self, samples: PromptSamples | None, step: int, device: torch.device) -> tuple[dict[str, float], torch.Tensor | None]:
        """Record one drawing: (its metrics as val_<name>, averaged over ranks so every rank stops alike; its grid)."""
        if samples is None:
            return {}, None
        names = sorted(samples.metrics)
        values = torch.tensor([samples.metrics[name] for name in names], dtype=torch.float64, device=device)
        values = dist_env.all_reduce_sum(values, self.info).cpu() / self.info.world_size
        metrics = {f"val_{name}": float(value) for name, value in zip(names, values)}
        grid = grid_of(samples.images.cpu())
        self.prompts = samples.prompts
        self.grids.setdefault("first", (step, grid))
        self.grids["latest"] = (step, grid)
        self.history = [h for h in self.history if h["step"] < step] + [{"step": step, **metrics}]
        return metrics, grid

    # ---------------------------------------------------------------- checkpoints and the training record
    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"prompt_grids": {name: grid for name, (_, grid) in self.grids.items()}} if self.grids else {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "prompts": self.prompts,
                "grid_steps": {name: step for name, (step, _) in self.grids.items()}}

    def load_state_dict(self, state: dict[str, Any] | None, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        state = state or {"history": [], "prompts": [], "grid_steps": {}}
        self.history, self.prompts = state["history"], state["prompts"]
        grids = tensors.get("prompt_grids", {})
        self.grids = {name: (step, grids[name]) for name, step in state["grid_steps"].items()}

    def record(self) -> dict[str, Any] | None:
        """What the training record keeps: prompts, metrics per step, first and latest grid as PNG data URIs."""
        if not self.grids:
            return None
        return {"prompts": self.prompts, "history": self.history,
                "grids": [{"name": name, "step": step, "png": png_data_uri(grid)} for name, (step, grid) in self.grids.items()]}
