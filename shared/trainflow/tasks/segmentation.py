"""Segmentation: a class per pixel, from a mask per image (or the digits' strokes, which carry their digit's class)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trainflow.config import IngestConfig
from trainflow.config.training import LossConfig
from trainflow.tasks.definition import MetricFunction, MetricSpec, RecordNeeds, ServingTensor
from trainflow.tasks.supervised import SupervisedDefinition, SupervisedTraining


class SegmentationTraining(SupervisedTraining):
    per_pixel_outputs = True

    def build_loss(self, cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        from trainflow.tasks.losses import segmentation_loss

        counts = torch.tensor(self.stats.get("class_counts", []), dtype=torch.float64)
        return segmentation_loss(cfg, counts if counts.numel() else None, len(self.class_names))

    def target_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["mask"]

    def validation_sums(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        predicted, mask = outputs.argmax(1), batch["mask"]
        classes = len(self.class_names)
        one_hot_pred = nn.functional.one_hot(predicted, classes).flatten(0, -2).float()
        one_hot_true = nn.functional.one_hot(mask, classes).flatten(0, -2).float()
        intersection = (one_hot_pred * one_hot_true).sum(0)
        return {"correct_pixels": (predicted == mask).sum().float(),
                "pixels": torch.tensor(float(mask.numel()), device=outputs.device),
                "intersection": intersection, "union": one_hot_pred.sum(0) + one_hot_true.sum(0) - intersection}

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        present = totals["union"] > 0  # classes absent from prediction and truth do not count
        return {"pixel_accuracy": float(totals["correct_pixels"] / totals["pixels"]),
                "mean_iou": float((totals["intersection"][present] / totals["union"][present]).mean())}


class SegmentationDefinition(SupervisedDefinition):
    name = "segmentation"
    description = "a class per pixel from a mask per image"
    validation_metrics = ("val_loss", "val_pixel_accuracy", "val_mean_iou")
    headline_metrics = (MetricSpec("mean_iou", "mean IoU"), MetricSpec("mean_dice", "mean Dice"),
                        MetricSpec("pixel_accuracy", "pixel accuracy"))
    output_names = ("predicted", "masks")
    record_needs = RecordNeeds(required=frozenset({"mask"}), classes_of="masks")
    training_class = SegmentationTraining
    truth_key = "mask"
    names_key = "class_names"

    def check_ingest(self, ingest: IngestConfig) -> None:
        if not (ingest.mask_column or ingest.sklearn_dataset == "digits"):
            raise ValueError("ingest.mask_column: segmentation needs a mask column (or sklearn_dataset: digits, whose masks are the strokes)")

    def readable_outputs(self, outputs: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        return outputs.softmax(1)

    def stored_output(self, readable: torch.Tensor) -> torch.Tensor:
        return readable.argmax(1)  # class maps: probabilities of N·K·H·W values would be too large to keep

    def serving_outputs(self, folder: Path) -> ServingTensor:
        # a class index per pixel, into the class names the registry records as the version's trainflow.output_names tag
        return ServingTensor("int64", (-1, -1, -1))

    def served(self, readable: torch.Tensor, names: list[str]) -> Any:
        return readable.argmax(1).numpy()

    def metric_function(self, names: list[str]) -> MetricFunction:
        from trainflow.metrics.supervised import segmentation_metrics

        return functools.partial(segmentation_metrics, class_names=names)

    def report_section(self, scored, results: dict[str, Any]) -> str:
        from trainflow.report.evaluation_sections import segmentation_section

        return segmentation_section(scored, results)


TASK = SegmentationDefinition()
