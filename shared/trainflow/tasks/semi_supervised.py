"""Semi-supervised classification: a few labelled train records, many unlabelled ones, pseudo-labels above a confidence.

Ingest keeps the labels of ingest.labelled_fraction of the train records (stratified, seeded; the rest
are in the manifest as `unlabelled: true`): the task says which through `hidden_train_labels`. Each batch holds B labelled records and B × unlabelled_ratio
unlabelled ones (trainflow.tasks.semi_supervised_batches). The loss is the labelled cross-entropy plus
unlabelled_weight × the cross-entropy of each unlabelled record against the class the model gives it, for
records where that class's probability is at least confidence_threshold (the rest count as zero), averaged
over all unlabelled records of the batch, as FixMatch does.

Why pseudo-labelling on one view rather than FixMatch's weak/strong pair: the records are 8×8 digits, where
the strong augmentations FixMatch relies on (RandAugment, Cutout) erase most of a digit, and one view keeps
the cost of a step at one forward pass over the batch; the confidence threshold is FixMatch's own filter,
and train.transforms still augments every record (labelled or not) as the weak view.
Labelled and unlabelled records go through the model in one forward pass, so batch norm sees one batch.
Validation, test outputs, metrics and the model folder are classification's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainflow.config import IngestConfig, ModelConfig, TrainConfig
from trainflow.config.training import LossConfig, SemiSupervisedConfig
from trainflow.errors import UserFacingError
from trainflow.tasks.classification import ClassificationDefinition, ClassificationTraining
from trainflow.data.checks.record_validation import IngestRecord
from trainflow.tasks.definition import HiddenLabels, RecordNeeds


def unlabelled_train_ids(records: Sequence[IngestRecord], assignment: dict[str, str], fraction: float,
                         seed: int) -> set[str]:
    """Ids of the train records whose labels the manifest leaves out (empty when fraction is 1).

    A pure function of the train records' ids and labels, the fraction and the seed, like the split itself:
    the same inputs give the same manifest byte for byte. Stratified: every class keeps round(fraction × its
    count) labelled records, and at least one, so a class is never left without a labelled example.
    (scikit-learn's stratified splitters refuse fractions that leave a class fewer records than classes.)
    """
    by_class: dict[int, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.record_id):
        if assignment[record.record_id] == "train" and record.label is not None:
            by_class[record.label].append(record.record_id)
    rng = np.random.default_rng([seed, 104_729])  # its own stream: the split's draws are unchanged
    hidden: set[str] = set()
    for label in sorted(by_class):
        ids = by_class[label]
        keep = max(1, round(fraction * len(ids)))
        order = rng.permutation(len(ids))
        hidden.update(ids[i] for i in order[keep:])
    return hidden


def pseudo_label_loss(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean over records of CE(logits, argmax) where the top probability reaches `threshold`, else 0."""
    confidence, pseudo_labels = logits.detach().float().softmax(1).max(1)
    kept = (confidence >= threshold).float()
    return (F.cross_entropy(logits.float(), pseudo_labels, reduction="none") * kept).mean()


class SemiSupervisedTraining(ClassificationTraining):
    def __init__(self, name: str, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> None:
        super().__init__(name, cache_dir, model_cfg, train_cfg, seed)
        self.options = train_cfg.semi_supervised or SemiSupervisedConfig()
        labels = self._train.arrays["labels"]
        self.labelled = (labels >= 0).nonzero().flatten().tolist()
        self.unlabelled = (labels < 0).nonzero().flatten().tolist()
        if not self.labelled:
            raise UserFacingError("the train split has no labelled records; raise ingest.labelled_fraction")
        if not self.unlabelled and self.options.unlabelled_ratio:
            raise UserFacingError("the train split has no unlabelled records, so semi_supervised has nothing to "
                                  "pseudo-label; lower ingest.labelled_fraction (or use task classification)")

    def build_loss(self, cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        from trainflow.tasks.losses import classification_loss

        labels = self._train.arrays["labels"]
        return classification_loss(cfg, labels[labels >= 0], len(self.class_names))  # class weights from labelled ones

    def train_dataset(self):
        from trainflow.tasks.semi_supervised_batches import PartlyLabelledBatches

        return PartlyLabelledBatches(self._train, self.labelled, self.unlabelled, self.options.unlabelled_ratio, self.seed)

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        unlabelled = batch.get("unlabelled_inputs")
        if unlabelled is None or not self.options.unlabelled_weight:
            return self.loss(model(batch["inputs"]).float(), batch["label"])
        logits = model(torch.cat([batch["inputs"], unlabelled])).float()
        count = len(batch["inputs"])
        return self.loss(logits[:count], batch["label"]) + \
            self.options.unlabelled_weight * pseudo_label_loss(logits[count:], self.options.confidence_threshold)


class SemiSupervisedDefinition(ClassificationDefinition):
    name = "semi_supervised"
    description = "one class per image or feature row, learnt from a few labels and many unlabelled records"
    record_needs = RecordNeeds(required=frozenset({"label"}), classes_of="labels")
    training_class = SemiSupervisedTraining
    config_fields = frozenset({"ingest.labelled_fraction", "train.semi_supervised"})

    def check_ingest(self, ingest: IngestConfig) -> None:
        if not (ingest.label_column or ingest.sklearn_dataset):
            raise ValueError("ingest.label_column: semi_supervised needs a label column (ingest hides all but "
                             "ingest.labelled_fraction of the train labels)")
        if ingest.sklearn_dataset == "diabetes":
            raise ValueError("ingest.sklearn_dataset: diabetes has numeric targets, not classes; use task: regression")
        if ingest.labelled_fraction is None:
            raise ValueError("ingest.labelled_fraction: semi_supervised needs the share of train records that keep "
                             "their label, e.g. 0.1")
        if ingest.labelled_fraction == 1:
            raise ValueError("ingest.labelled_fraction: 1 keeps every label, so there are no unlabelled records to "
                             "learn from; lower it (e.g. 0.1) or use task classification")

    def hidden_train_labels(self, records: list[IngestRecord], assignment: dict[str, str], ingest: IngestConfig,
                            seed: int) -> HiddenLabels:
        """All but ingest.labelled_fraction of the train labels (check_ingest has made sure it is set)."""
        fraction = ingest.labelled_fraction
        assert fraction is not None, "check_config requires ingest.labelled_fraction for this task"
        return HiddenLabels(frozenset(unlabelled_train_ids(records, assignment, fraction, seed)),
                            f"ingest.labelled_fraction {fraction:g}, stratified, seeded")


TASK = SemiSupervisedDefinition()
