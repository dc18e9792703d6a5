"""Classification, regression and segmentation on the supervised cache: one task class, three heads.

The model comes from the zoo (input normalisation inside it); the loss from
tasks/losses.py. Regression trains on targets standardised with the train
split's mean and std (so one learning rate fits any target scale); the model
folder records them and `predict` maps outputs back to the target's units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainflow.config import LossConfig, ModelConfig
from trainflow.config.data_loading import DataLoadingConfig, TransformsConfig
from trainflow.data.cache.supervised_cache import SupervisedCache, read_supervised_attrs
from trainflow.models.model_folder import load_model_folder, save_model_folder
from trainflow.models.zoo import build_model
from trainflow.tasks.losses import classification_loss, regression_loss, segmentation_loss


class SupervisedTask:
    def __init__(self, name: str, cache_dir: Path, model_cfg: ModelConfig, loss_cfg: LossConfig, seed: int,
                 transforms: TransformsConfig | None = None, loading: DataLoadingConfig | None = None) -> None:
        self.name, self.cache_dir, self.model_cfg, self.seed = name, Path(cache_dir), model_cfg, seed
        self.transforms, self.loading = transforms, loading
        self.info, self.stats = read_supervised_attrs(cache_dir)
        self.class_names = self.info.get("class_names") or []
        self.target_names = self.info.get("target_names") or []
        self._train = SupervisedCache(cache_dir, "train", transforms, loading, seed)
        if name == "classification":
            self.loss = classification_loss(loss_cfg, self._train.arrays["labels"], len(self.class_names))
        elif name == "regression":
            self.loss = regression_loss(loss_cfg, len(self.target_names))
            self.target_mean = torch.tensor(self.stats["target_mean"], dtype=torch.float32)
            self.target_std = torch.tensor(self.stats["target_std"], dtype=torch.float32)
        else:
            counts = torch.tensor(self.stats.get("class_counts", []), dtype=torch.float64)
            self.loss = segmentation_loss(loss_cfg, counts if counts.numel() else None, len(self.class_names))

    # ------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        image = self.info["kind"] == "image"
        outputs = len(self.target_names) if self.name == "regression" else len(self.class_names)
        features = None if image else len(self.info["feature_names"])
        # The model resizes other inputs to its training size itself, so evaluation at the cache's size still fits.
        resolution = (self.transforms.resize if self.transforms and self.transforms.resize else None) or self.info.get("resolution")
        return build_model(self.model_cfg, self.name, in_channels=3, in_features=features, num_outputs=outputs,
                           resolution=resolution, input_mean=self.stats["input_mean"],
                           input_std=self.stats["input_std"])

    def train_dataset(self) -> SupervisedCache:
        return self._train

    def val_dataset(self) -> SupervisedCache:
        return SupervisedCache(self.cache_dir, "val", self.transforms, self.loading, self.seed)

    def learning_rates(self) -> dict[str, float]:
        return {}

    def _standardised(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean.to(targets.device)) / self.target_std.to(targets.device)

    def _target_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.name == "classification":
            return batch["label"]
        if self.name == "regression":
            return self._standardised(batch["targets"])
        return batch["mask"]

    # ------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(model(batch["inputs"]).float(), self._target_of(batch))

    def validation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["inputs"]).float()
        count = torch.tensor(float(len(outputs)), device=outputs.device)
        totals = {"loss_sum": self.loss(outputs, self._target_of(batch)) * count, "count": count}
        if self.name == "classification":
            totals["correct"] = (outputs.argmax(1) == batch["label"]).sum().float()
        elif self.name == "regression":
            error = self.predict(outputs) - batch["targets"]
            totals["squared_error_sum"] = (error ** 2).mean(1).sum()
            totals["absolute_error_sum"] = error.abs().mean(1).sum()
        else:
            predicted, mask = outputs.argmax(1), batch["mask"]
            classes = len(self.class_names)
            totals["correct_pixels"] = (predicted == mask).sum().float()
            totals["pixels"] = torch.tensor(float(mask.numel()), device=outputs.device)
            one_hot_pred = nn.functional.one_hot(predicted, classes).flatten(0, -2).float()
            one_hot_true = nn.functional.one_hot(mask, classes).flatten(0, -2).float()
            totals["intersection"] = (one_hot_pred * one_hot_true).sum(0)
            totals["union"] = one_hot_pred.sum(0) + one_hot_true.sum(0) - totals["intersection"]
        return totals

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        count = totals["count"]
        metrics = {"loss": float(totals["loss_sum"] / count)}
        if self.name == "classification":
            metrics["accuracy"] = float(totals["correct"] / count)
        elif self.name == "regression":
            metrics["mse"] = float(totals["squared_error_sum"] / count)
            metrics["mae"] = float(totals["absolute_error_sum"] / count)
        else:
            metrics["pixel_accuracy"] = float(totals["correct_pixels"] / totals["pixels"])
            present = totals["union"] > 0  # classes absent from prediction and truth do not count
            metrics["mean_iou"] = float((totals["intersection"][present] / totals["union"][present]).mean())
        return metrics

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs in the targets' units (the model predicts standardised targets)."""
        return outputs * self.target_std.to(outputs.device) + self.target_mean.to(outputs.device)

    # ------------------------------------------------------------ export
    def export(self, model: nn.Module, folder: Path) -> None:
        meta: dict[str, Any] = {"task": self.name, "kind": self.info["kind"], "class_names": self.class_names,
                                "target_names": self.target_names, "feature_names": self.info.get("feature_names")}
        if self.name == "regression":
            meta["target_mean"], meta["target_std"] = self.stats["target_mean"], self.stats["target_std"]
        save_model_folder(model, folder, meta)


def load_supervised_model(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    return load_model_folder(folder)


def model_outputs(model: nn.Module, meta: dict[str, Any], inputs: torch.Tensor) -> torch.Tensor:
    """What a person reads: class probabilities, targets in their units, or per-pixel class probabilities."""
    outputs = model(inputs).float()
    if meta["task"] == "regression":
        return outputs * torch.tensor(meta["target_std"]) + torch.tensor(meta["target_mean"])
    return outputs.softmax(1)
