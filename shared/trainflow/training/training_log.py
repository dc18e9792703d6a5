"""Where training reports go: a JSON-lines step log, TensorBoard, MLflow, a progress bar, one line per validation.

The step log (`training_log.jsonl` in the checkpoint folder) is the run's record
of every optimizer step; on resume it is cut back to the checkpoint's step, so
it always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from trainflow.atomic_files import atomic_write_text
from trainflow.config.training import LoggingConfig

STEP_LOG = "training_log.jsonl"


def memory_in_use_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except (ImportError, OSError):
        return float("nan")


class TrainingLog:
    def __init__(self, cfg: LoggingConfig, checkpoint_dir: Path, tensorboard_dir: Path | None, enabled: bool) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.step_log = Path(checkpoint_dir) / STEP_LOG
        self._writer = None
        self._mlflow = None
        if not enabled:
            return
        self.step_log.parent.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir))
        if cfg.mlflow and os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            self._mlflow = mlflow

    def truncate_after(self, step: int) -> None:
        """Drop step records after `step` (they were not covered by the checkpoint we resume from)."""
        if not self.enabled or not self.step_log.is_file():
            return
        kept = [line for line, record in _complete_lines(self.step_log) if record.get("step", 0) <= step]
        atomic_write_text(self.step_log, "".join(line + "\n" for line in kept))

    def reset(self) -> None:
        if self.enabled and self.step_log.exists():
            self.step_log.unlink()

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.step_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        step = int(record["step"])
        if step % self.cfg.every_n_steps == 0:
            scalars = {k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
            if self._writer is not None:
                for name, value in scalars.items():
                    self._writer.add_scalar(f"train/{name}", value, step)
            if self._mlflow is not None:
                self._mlflow.log_metrics({f"train_{k}": float(v) for k, v in scalars.items()}, step=step)

    def validation(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"val/{name.removeprefix('val_')}", value, step)
            self._writer.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(metrics, step=step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """A grid of float images in [0, 1], (N, 3, H, W)."""
        if self.enabled and self._writer is not None:
            from torchvision.utils import make_grid

            self._writer.add_image(tag, make_grid(images, nrow=min(8, len(images))), step)

    def image_grid(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """A ready-made uint8 (3, H, W) grid."""
        if self.enabled and self._writer is not None:
            self._writer.add_image(tag, grid, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _complete_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every finished line with its record: a line still being appended (or cut by a kill) has no newline yet."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = []
    for line in text.split("\n")[:-1]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write; the checkpoint, not the log, is the source of truth
        if isinstance(record, dict):
            lines.append((line, record))
    return lines


def read_step_log(checkpoint_dir: Path) -> list[dict[str, Any]]:
    path = Path(checkpoint_dir) / STEP_LOG
    if not path.is_file():
        return []
    return [record for _, record in _complete_lines(path)]
