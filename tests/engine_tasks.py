"""Small tasks for engine tests: real data (scikit-learn's wine), no dropout, so runs compare exactly.

Importable by subprocesses (torchrun, kill-and-resume drivers) with tests/ on PYTHONPATH.
Fault knobs (all off by default) let a test inject what the engine must survive:
an out-of-memory error on large micro-batches, a NaN loss, and a record of what
each training step saw (record indices and one random draw).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from sklearn.datasets import load_wine
from torch import nn
from torch.utils.data import Dataset


class TableDataset(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.features[index], "y": self.labels[index], "index": torch.tensor(index)}


class WineTask:
    """Classify scikit-learn's wine table with a small MLP (standardised features).

    fail_when_batch_larger_than: raise torch.OutOfMemoryError for larger micro-batches
    (only after `oom_after_calls` training steps, so the fault can land mid-epoch; with `oom_only_on_rank`,
    only in that torchrun rank, as when one GPU holds more than the others).
    nan_loss_at_call: the training_step call (1-based) that returns a NaN loss.
    nan_validation_at_call: the validation (1-based) whose loss comes out NaN.
    draw_random: draw one torch.rand() per training_step (recorded in `calls`).
    buckets_by_label: give the train and val sets `bucket_ids` (the wine class), as aspect-ratio buckets do,
    so the engine's batch plan keeps every step inside one bucket.
    """

    name = "classification"

    def __init__(self, train_records: int = 120, fail_when_batch_larger_than: int | None = None,
                 oom_after_calls: int = 0, nan_loss_at_call: int | None = None, nan_validation_at_call: int | None = None,
                 draw_random: bool = False, oom_only_on_rank: int | None = None, buckets_by_label: bool = False) -> None:
        data = load_wine()
        x = torch.tensor(data.data, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        self.train = TableDataset(x[:train_records], y[:train_records])
        self.val = TableDataset(x[train_records:], y[train_records:])
        if buckets_by_label:
            self.train.bucket_ids, self.val.bucket_ids = y[:train_records].numpy(), y[train_records:].numpy()
        self.fail_when_batch_larger_than = fail_when_batch_larger_than
        self.oom_after_calls = oom_after_calls
        self.oom_here = oom_only_on_rank is None or oom_only_on_rank == int(os.environ.get("RANK", "0"))
        self.nan_loss_at_call = nan_loss_at_call
        self.nan_validation_at_call = nan_validation_at_call
        self.draw_random = draw_random
        self.batch_sizes_seen: list[int] = []
        self.calls: list[dict] = []  # per training_step call: record indices, random draw, outcome
        self.validation_counts: list[float] = []  # records counted by each validation (after the engine's reduction)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))

    def train_dataset(self) -> Dataset:
        return self.train

    def val_dataset(self) -> Dataset:
        return self.val

    def learning_rates(self) -> dict[str, float]:
        return {}

    def training_step(self, model: nn.Module, batch: dict) -> torch.Tensor:
        self.batch_sizes_seen.append(len(batch["y"]))
        call = {"indices": batch["index"].tolist(), "event": "ok"}
        if self.draw_random:
            call["random"] = float(torch.rand(()))
        self.calls.append(call)
        too_large = self.fail_when_batch_larger_than is not None and len(batch["y"]) > self.fail_when_batch_larger_than
        if too_large and self.oom_here and len(self.calls) > self.oom_after_calls:
            call["event"] = "oom"
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        loss = nn.functional.cross_entropy(model(batch["x"]), batch["y"])
        if self.nan_loss_at_call is not None and len(self.calls) == self.nan_loss_at_call:
            call["event"] = "nan"
            return loss * math.nan
        return loss

    def validation_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["x"])
        losses = nn.functional.cross_entropy(logits, batch["y"], reduction="none")
        return {"loss_sum": losses.sum(), "count": torch.tensor(float(len(losses))),
                "correct": (logits.argmax(1) == batch["y"]).sum().float()}

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        self.validation_counts.append(float(totals["count"]))
        loss = float(totals["loss_sum"] / totals["count"])
        if len(self.validation_counts) == self.nan_validation_at_call:
            loss = math.nan
        return {"loss": loss, "accuracy": float(totals["correct"] / totals["count"])}

    def export(self, model: nn.Module, folder: Path) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(folder) / "model.safetensors"))
