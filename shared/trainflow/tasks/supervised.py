"""What classification, regression and segmentation share: the supervised cache, a zoo model, one loss, a model folder.

Each of those tasks is its own module (trainflow.tasks.classification, .regression, .segmentation)
with two small subclasses of what is here: a `SupervisedTraining` (the object the engine trains:
its loss, its target, the sums its validation adds up) and a `SupervisedDefinition` (what the rest
of trainflow asks: config fields, metrics, record outputs, the report section). The model comes
from the zoo with input normalisation inside it, so an exported folder is self-contained.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainflow.config import CacheConfig, IngestConfig, ModelConfig, TrainConfig
from trainflow.config.training import DiffusionTrainingConfig, LossConfig
from trainflow.errors import UserFacingError
from trainflow.tasks.definition import ServingSchema, ServingTensor, TaskDefinition, TestRequest, predictor_test_outputs


class SupervisedTraining(abc.ABC):
    """The engine's view of a supervised task (see trainflow.training.task.Task)."""

    per_pixel_outputs = False  # the zoo builds a per-pixel (segmentation) head instead of one output per record

    def __init__(self, name: str, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> None:
        from trainflow.data.cache.supervised_cache import SupervisedCache, read_supervised_attrs

        self.name, self.cache_dir, self.model_cfg, self.seed = name, Path(cache_dir), model_cfg, seed
        self.transforms, self.loading = train_cfg.transforms, train_cfg.data_loading
        self.info, self.stats = read_supervised_attrs(cache_dir)
        self.class_names = self.info.get("class_names") or []
        self.target_names = self.info.get("target_names") or []
        self._train = SupervisedCache(cache_dir, "train", self.transforms, self.loading, seed)
        self.loss = self.build_loss(train_cfg.loss)

    # ------------------------------------------------------------ what each task fills in
    @abc.abstractmethod
    def build_loss(self, cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss on (model outputs, target_of(batch))."""

    @abc.abstractmethod
    def target_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the loss compares the model's outputs with."""

    @abc.abstractmethod
    def validation_sums(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums over the batch beside loss_sum and count (summed over batches and ranks by the engine)."""

    @abc.abstractmethod
    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """The task's validation metrics (beside loss) from the summed totals."""

    def num_outputs(self) -> int:
        return len(self.class_names)

    def export_meta(self) -> dict[str, Any]:
        """Extra facts the model folder keeps for prediction (e.g. a regression's target scale)."""
        return {}

    # ------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        from trainflow.models.zoo import build_model

        image = self.info["kind"] == "image"
        features = None if image else len(self.info["feature_names"])
        # The model resizes other inputs to its training size itself, so evaluation at the cache's size still fits.
        resolution = (self.transforms.resize if self.transforms and self.transforms.resize else None) or self.info.get("resolution")
        return build_model(self.model_cfg, per_pixel=self.per_pixel_outputs, in_channels=3, in_features=features,
                           num_outputs=self.num_outputs(), resolution=resolution, input_mean=self.stats["input_mean"],
                           input_std=self.stats["input_std"])

    def train_dataset(self):
        return self._train

    def val_dataset(self):
        from trainflow.data.cache.supervised_cache import SupervisedCache

        return SupervisedCache(self.cache_dir, "val", self.transforms, self.loading, self.seed)

    def learning_rates(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(model(batch["inputs"]).float(), self.target_of(batch))

    def validation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["inputs"]).float()
        count = torch.tensor(float(len(outputs)), device=outputs.device)
        totals = {"loss_sum": self.loss(outputs, self.target_of(batch)) * count, "count": count}
        totals.update(self.validation_sums(outputs, batch))
        return totals

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": float(totals["loss_sum"] / totals["count"]), **self.validation_metrics(totals)}

    # ------------------------------------------------------------ export
    def export(self, model: nn.Module, folder: Path) -> None:
        from trainflow.models.model_folder import save_model_folder

        meta: dict[str, Any] = {"task": self.name, "kind": self.info["kind"], "class_names": self.class_names,
                                "target_names": self.target_names, "feature_names": self.info.get("feature_names")}
        save_model_folder(model, folder, {**meta, **self.export_meta()})


class SupervisedPredictor:
    """A supervised model folder loaded back: `predict` for any inputs, `record_outputs` on a cache's test split."""

    def __init__(self, definition: "SupervisedDefinition", model: nn.Module, meta: dict[str, Any]) -> None:
        self.definition, self.model, self.meta = definition, model, meta
        self.task = definition.name
        self.names = list(meta.get(definition.names_key) or [])

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """What a person reads: class probabilities, targets in their units, or per-pixel class probabilities."""
        return self.definition.readable_outputs(self.model(inputs).float(), self.meta)

    @torch.no_grad()
    def record_outputs(self, cache_dir: Path, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, truth) on the cache's test split in record order; UserFacingError when the split is empty."""
        from trainflow.data.cache.supervised_cache import SupervisedCache

        test_set = SupervisedCache(cache_dir, "test")
        if len(test_set) == 0:
            raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
        self.model = self.model.to(device).eval()
        outputs, truths = [], []
        for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False):
            readable = self.predict(batch["inputs"].to(device)).cpu()
            outputs.append(self.definition.stored_output(readable))
            truths.append(batch[self.definition.truth_key])
        return torch.cat(outputs), self.definition.stored_truth(torch.cat(truths))


class SupervisedDefinition(TaskDefinition):
    """What the three supervised tasks share; each sets the class attributes and the small methods below."""

    pipeline = "supervised"
    compares_per_record = True
    training_class: type[SupervisedTraining]
    truth_key: str  # the cache batch's ground truth: label, targets or mask
    names_key: str  # the model folder's names of its outputs: class_names or target_names

    # ------------------------------------------------------------ what each task fills in
    @abc.abstractmethod
    def check_ingest(self, ingest: IngestConfig) -> None:
        """ValueError naming the ingest field this task needs and that is missing."""

    @abc.abstractmethod
    def readable_outputs(self, outputs: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        """The model's raw outputs as a person reads them (probabilities, values in the targets' units)."""

    def stored_output(self, readable: torch.Tensor) -> torch.Tensor:
        """What the per-record outputs keep of `readable` (default: float64 values)."""
        return readable.double()

    def stored_truth(self, truth: torch.Tensor) -> torch.Tensor:
        return truth

    @abc.abstractmethod
    def serving_outputs(self, folder: Path) -> "dict[str, str] | ServingTensor":
        """What a registered version returns (columns or an array), for its MLflow signature."""

    @abc.abstractmethod
    def served(self, readable: torch.Tensor, names: list[str]) -> Any:
        """`readable` outputs as the registered version returns them (a DataFrame or an array)."""

    # ------------------------------------------------------------ the interface
    def check_config(self, ingest: IngestConfig | None, model: ModelConfig | None, train: TrainConfig | None) -> None:
        if model is not None and not model.architecture:
            raise ValueError(f"model.architecture: task {self.name} needs an architecture (small_cnn, mlp, seg_cnn, resnet18, ...)")
        if ingest is not None:
            for field in ("buckets", "prior_preservation"):
                if getattr(ingest, field) is not None:
                    raise ValueError(f"ingest.{field}: applies to text_to_image only, not {self.name}")
            if ingest.alpha_mask:
                raise ValueError(f"ingest.alpha_mask: applies to text_to_image only, not {self.name}")
            self.check_ingest(ingest)
        super().check_config(ingest, model, train)
        if train is not None and train.diffusion != DiffusionTrainingConfig():
            raise ValueError(f"train.diffusion: these options apply to text_to_image only, not {self.name}")

    def build_cache(self, dataset_dir: str, cache_dir: str, model_cfg: ModelConfig, cache_cfg: CacheConfig) -> dict[str, Any]:
        from trainflow.data.cache.supervised_cache import build_supervised_cache

        # Keyed by dataset and settings: reused from cache.cache_root when they match, resumed when a build was killed.
        return build_supervised_cache(dataset_dir, cache_dir, cache_cfg)

    def training_task(self, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> SupervisedTraining:
        return self.training_class(self.name, cache_dir, model_cfg, train_cfg, seed)

    def load_for_prediction(self, folder: Path) -> SupervisedPredictor:
        """The model folder loaded back; UserFacingError when it holds another task's model."""
        from trainflow.models.model_folder import load_model_folder

        model, meta = load_model_folder(folder)
        if meta.get("task") != self.name:
            raise UserFacingError(f"{folder} holds a {meta.get('task')} model, not a {self.name} model")
        return SupervisedPredictor(self, model, meta)

    def serving_schema(self, folder: Path) -> ServingSchema:
        from trainflow.tasks.supervised_serving import supervised_schema

        return supervised_schema(folder, self.serving_outputs(folder))

    def serve(self, predictor: SupervisedPredictor, model_input: Any, params: dict[str, Any]) -> Any:
        from trainflow.tasks.supervised_serving import input_tensor

        return self.served(predictor.predict(input_tensor(predictor, model_input)), predictor.names)

    def test_outputs(self, request: TestRequest):
        return predictor_test_outputs(self, request)
