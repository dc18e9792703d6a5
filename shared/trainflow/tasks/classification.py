"""Classification: one class per record (images or feature rows), from a label column or a bundled set."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import torch

from trainflow.config import IngestConfig
from trainflow.config.training import LossConfig
from trainflow.tasks.definition import MetricFunction, MetricSpec, RecordNeeds
from trainflow.tasks.supervised import SupervisedDefinition, SupervisedTraining


class ClassificationTraining(SupervisedTraining):
    def build_loss(self, cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        from trainflow.tasks.losses import classification_loss

        return classification_loss(cfg, self._train.arrays["labels"], len(self.class_names))

    def target_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["label"]

    def validation_sums(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"correct": (outputs.argmax(1) == batch["label"]).sum().float()}

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": float(totals["correct"] / totals["count"])}


class ClassificationDefinition(SupervisedDefinition):
    name = "classification"
    description = "one class per image or feature row"
    validation_metrics = ("val_loss", "val_accuracy")
    headline_metrics = (MetricSpec("accuracy", "accuracy"), MetricSpec("f1_macro", "macro F1"))
    summary_metrics = (MetricSpec("accuracy", "accuracy"), MetricSpec("f1_macro", "macro F1"),
                       MetricSpec("roc_auc", "ROC-AUC (one-vs-rest)"), MetricSpec("log_loss", "log loss"))
    output_names = ("probabilities", "labels")
    record_needs = RecordNeeds(required=frozenset({"label"}), classes_of="labels")
    training_class = ClassificationTraining
    truth_key = "label"
    names_key = "class_names"

    def check_ingest(self, ingest: IngestConfig) -> None:
        if not (ingest.label_column or ingest.sklearn_dataset):
            raise ValueError("ingest.label_column: classification needs a label column")
        if ingest.sklearn_dataset == "diabetes":
            raise ValueError("ingest.sklearn_dataset: diabetes has numeric targets; use task: regression")

    def readable_outputs(self, outputs: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        return outputs.softmax(1)

    def serving_outputs(self, folder: Path) -> dict[str, str]:
        from trainflow.tasks.supervised_serving import read_folder_config

        names = read_folder_config(folder)["meta"]["class_names"]
        return {"predicted_class": "string", **{f"probability_{name}": "double" for name in names}}

    def served(self, readable: torch.Tensor, names: list[str]) -> Any:
        from trainflow.tasks.supervised_serving import classification_frame

        return classification_frame(readable, names)

    def metric_function(self, names: list[str]) -> MetricFunction:
        from trainflow.metrics.supervised import classification_metrics

        return functools.partial(classification_metrics, class_names=names)

    def report_section(self, scored, results: dict[str, Any]) -> str:
        from trainflow.report.evaluation_sections import classification_section

        return classification_section(scored, results)

    def log_kfp_metrics(self, artifact: Any, scored, results: dict[str, Any]) -> bool:
        from trainflow.report.kfp_classification import log_classification_metrics

        log_classification_metrics(artifact, results["confusion_matrix"], scored.outputs["best"], scored.truth, scored.names)
        return True


TASK = ClassificationDefinition()
