"""Autoencoder: reconstruct images (unsupervised); in anomaly mode, tell one held-out class by its reconstruction error.

Data: the supervised cache (images, labels when the source has them). The model: a convolutional
autoencoder, optionally variational (trainflow.tasks.autoencoder_model), trained on per-pixel MSE
(plus kl_weight × KL for a VAE). Test outputs per record: MSE, PSNR and SSIM of its reconstruction
(trainflow.metrics.image_quality, data range 1.0) and whether it belongs to the anomaly class. The
headline MSE, PSNR and SSIM are means over the records of the trained classes; with
train.autoencoder.anomaly_class the ROC-AUC of the per-record MSE separates that class from the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from trainflow.config import CacheConfig, IngestConfig, ModelConfig, TrainConfig
from trainflow.config.training import AutoencoderConfig, DiffusionTrainingConfig, LossConfig
from trainflow.errors import UserFacingError
from trainflow.tasks.definition import MetricFunction, MetricSpec, RecordNeeds, TaskDefinition, TestRequest, predictor_test_outputs

ARCHITECTURE = "conv_autoencoder"
ERROR_COLUMNS = ["mse", "psnr", "ssim"]  # the per-record outputs' columns


def anomaly_index(option: str | int | None, class_names: list[str]) -> int | None:
    """The class index train.autoencoder.anomaly_class names (by name first, then by index); UserFacingError if none."""
    if option is None:
        return None
    if str(option) in class_names:
        return class_names.index(str(option))
    if isinstance(option, int) and 0 <= option < len(class_names):
        return option
    raise UserFacingError(f"train.autoencoder.anomaly_class: {option!r} is not a class of the data (classes: "
                          f"{', '.join(class_names) or 'none: the source has no labels'}); name one of them")


def reconstruction_loss(reconstructions: torch.Tensor, images: torch.Tensor, mean: torch.Tensor,
                        log_variance: torch.Tensor | None, kl_weight: float) -> torch.Tensor:
    """Per-pixel MSE, plus kl_weight × the KL divergence of a VAE's code from N(0, I) (summed over the code, mean per record)."""
    loss = F.mse_loss(reconstructions.float(), images.float())
    if log_variance is not None:
        kl = -0.5 * (1 + log_variance - mean.pow(2) - log_variance.exp()).sum(1).mean()
        loss = loss + kl_weight * kl.float()
    return loss


class AutoencoderTraining:
    """The engine's view of the autoencoder (see trainflow.training.task.Task)."""

    def __init__(self, name: str, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> None:
        from trainflow.data.cache.supervised_cache import SupervisedCache, read_supervised_attrs

        self.name, self.cache_dir, self.model_cfg, self.seed = name, Path(cache_dir), model_cfg, seed
        self.options = train_cfg.autoencoder or AutoencoderConfig()
        self.transforms, self.loading = train_cfg.transforms, train_cfg.data_loading
        self.info, _ = read_supervised_attrs(cache_dir)
        if self.info["kind"] != "image":
            raise UserFacingError(f"{cache_dir} holds feature rows, not images; task autoencoder reconstructs images, "
                                  "so ingest an image source")
        self.class_names = list(self.info.get("class_names") or [])
        self.anomaly = anomaly_index(self.options.anomaly_class, self.class_names)
        self.resolution = self.transforms.resize or self.info["resolution"]
        self._train = self._normal_records(SupervisedCache(cache_dir, "train", self.transforms, self.loading, seed))

    def _normal_records(self, split):
        """The split without the anomaly class (all of it outside anomaly mode); UserFacingError when nothing is left."""
        if self.anomaly is None:
            return split
        from trainflow.data.loading.record_subset import RecordSubset

        kept = (split.arrays["labels"] != self.anomaly).nonzero().flatten().tolist()
        if not kept:
            raise UserFacingError(f"the {split.split} split holds only class {self.class_names[self.anomaly]!r}; "
                                  "train.autoencoder.anomaly_class leaves nothing to train on")
        return RecordSubset(split, kept)

    def build_model(self) -> nn.Module:
        from trainflow.tasks.autoencoder_model import ConvAutoencoder

        return ConvAutoencoder(3, self.resolution, self.model_cfg.width, self.options.latent_dim, self.options.variational)

    def train_dataset(self):
        return self._train

    def val_dataset(self):
        from trainflow.data.cache.supervised_cache import SupervisedCache

        return self._normal_records(SupervisedCache(self.cache_dir, "val", self.transforms, self.loading, self.seed))

    def learning_rates(self) -> dict[str, float]:
        return {}

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return reconstruction_loss(*self._forward(model, batch), self.options.kl_weight)

    @staticmethod
    def _forward(model: nn.Module, batch: dict[str, torch.Tensor]):
        reconstructions, mean, log_variance = model(batch["inputs"])
        return reconstructions, batch["inputs"], mean, log_variance

    def validation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        reconstructions, images, mean, log_variance = self._forward(model, batch)
        count = torch.tensor(float(len(images)), device=images.device)
        return {"loss_sum": reconstruction_loss(reconstructions, images, mean, log_variance, self.options.kl_weight) * count,
                "squared_error_sum": (reconstructions.float() - images.float()).pow(2).flatten(1).mean(1).sum(),
                "count": count}

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        count = totals["count"]
        return {"loss": float(totals["loss_sum"] / count), "mse": float(totals["squared_error_sum"] / count)}

    def export(self, model: nn.Module, folder: Path) -> None:
        from trainflow.tasks.autoencoder_model import save_autoencoder_folder

        anomaly = self.class_names[self.anomaly] if self.anomaly is not None else None
        save_autoencoder_folder(model, folder, {"task": self.name, "class_names": self.class_names,
                                                "anomaly_class": anomaly, "anomaly_index": self.anomaly})


@torch.no_grad()
def record_errors(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N, 3) float64: each record's MSE, PSNR (dB) and SSIM, data range 1.0 (trainflow.metrics.image_quality)."""
    from trainflow.metrics.image_quality import psnr, ssim

    rows = []
    for reconstruction, image in zip(reconstructions.float(), images.float()):
        pair = reconstruction[None], image[None]
        rows.append([float((pair[0] - pair[1]).pow(2).mean()), psnr(*pair), ssim(*pair)])
    return torch.tensor(rows, dtype=torch.float64)


def autoencoder_metrics(record_errors: torch.Tensor, anomaly: torch.Tensor) -> dict[str, Any]:
    """Means of MSE, PSNR, SSIM over the records of the trained classes (anomaly 0); with both kinds present,
    roc_auc: scikit-learn's ROC-AUC of the per-record MSE as the score that a record is of the anomaly class (1)."""
    from sklearn.metrics import roc_auc_score

    normal = anomaly == 0
    results: dict[str, Any] = {"num_normal": int(normal.sum()), "num_anomalous": int((anomaly == 1).sum())}
    if normal.any():
        results.update({name: float(record_errors[normal, column].mean()) for column, name in enumerate(ERROR_COLUMNS)})
    if results["num_anomalous"]:
        defined = results["num_normal"] > 0
        results["roc_auc"] = float(roc_auc_score(anomaly.numpy(), record_errors[:, 0].numpy())) if defined else float("nan")
    return results


class AutoencoderPredictor:
    """An autoencoder folder loaded back: `predict` reconstructs, `record_outputs` scores a cache's test split."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]) -> None:
        self.model, self.meta = model, meta
        self.task = meta["task"]
        self.names = list(ERROR_COLUMNS)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions in [0, 1] of images (N, 3, H, W) in [0, 1] (the size the model was trained at)."""
        return self.model(images.float())[0].float()

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's reconstruction MSE: the higher, the less it looks like what the model was trained on."""
        return (self.predict(images) - images.float()).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def record_outputs(self, cache_dir: Path, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-record MSE/PSNR/SSIM (N, 3), anomaly flags (N,): 1 for the anomaly class) on the test split."""
        from trainflow.data.cache.supervised_cache import SupervisedCache

        test_set = SupervisedCache(cache_dir, "test")
        if len(test_set) == 0:
            raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
        self.model = self.model.to(device).eval()
        errors, flags = [], []
        anomaly = self.meta.get("anomaly_index")
        for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False):
            images = batch["inputs"].to(device)
            errors.append(record_errors(self.predict(images).cpu(), images.cpu()))
            flags.append((batch["label"] == anomaly).long() if anomaly is not None else torch.zeros(len(images), dtype=torch.long))
        return torch.cat(errors), torch.cat(flags)


class AutoencoderDefinition(TaskDefinition):
    name = "autoencoder"
    description = "reconstruct images; optionally tell a held-out class by its reconstruction error"
    pipeline = "supervised"
    validation_metrics = ("val_loss", "val_mse")
    headline_metrics = (MetricSpec("mse", "MSE (trained classes)"), MetricSpec("psnr", "PSNR, dB (trained classes)"),
                        MetricSpec("ssim", "SSIM (trained classes)"),
                        MetricSpec("roc_auc", "ROC-AUC, reconstruction error: anomaly class vs the rest"))
    output_names = ("record_errors", "anomaly")
    record_needs = RecordNeeds(images=True)
    compares_per_record = True
    config_fields = frozenset({"train.autoencoder"})

    def check_config(self, ingest: IngestConfig | None, model: ModelConfig | None, train: TrainConfig | None) -> None:
        if model is not None and model.architecture not in (None, ARCHITECTURE):
            raise ValueError(f"model.architecture: task autoencoder builds its own {ARCHITECTURE}; remove "
                             f"{model.architecture!r} or set {ARCHITECTURE}")
        if ingest is not None:
            for field in ("buckets", "prior_preservation"):
                if getattr(ingest, field) is not None:
                    raise ValueError(f"ingest.{field}: applies to text_to_image only, not autoencoder")
            if ingest.sklearn_dataset not in (None, "digits"):
                raise ValueError(f"ingest.sklearn_dataset: {ingest.sklearn_dataset} is a table of feature rows and "
                                 "the autoencoder reconstructs images; use digits or an image source")
        if train is not None:
            if train.diffusion != DiffusionTrainingConfig() or train.loss != LossConfig():
                field = "diffusion" if train.diffusion != DiffusionTrainingConfig() else "loss"
                raise ValueError(f"train.{field}: the autoencoder's loss is per-pixel MSE (plus train.autoencoder."
                                 "kl_weight × KL when variational); remove train." + field)
            anomaly = train.autoencoder.anomaly_class if train.autoencoder else None
            if anomaly is not None and ingest is not None and not (ingest.label_column or ingest.sklearn_dataset):
                raise ValueError("train.autoencoder.anomaly_class: anomaly mode needs a class per record; set "
                                 "ingest.label_column")
        super().check_config(ingest, model, train)

    def build_cache(self, dataset_dir: str, cache_dir: str, model_cfg: ModelConfig, cache_cfg: CacheConfig) -> dict[str, Any]:
        from trainflow.data.cache.supervised_cache import build_supervised_cache

        built = build_supervised_cache(dataset_dir, cache_dir, cache_cfg)
        if built["kind"] != "image":
            raise UserFacingError(f"{dataset_dir} holds feature rows, not images; task autoencoder reconstructs images")
        return built

    def training_task(self, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> AutoencoderTraining:
        return AutoencoderTraining(self.name, cache_dir, model_cfg, train_cfg, seed)

    def load_for_prediction(self, folder: Path) -> AutoencoderPredictor:
        """The model folder loaded back; MissingWeightsError / UserFacingError for a folder that is not one."""
        from trainflow.tasks.autoencoder_model import load_autoencoder_folder

        model, meta = load_autoencoder_folder(folder)
        if meta.get("task") != self.name:
            raise UserFacingError(f"{folder} holds a {meta.get('task')} model, not an autoencoder")
        return AutoencoderPredictor(model, meta)

    def serving_schema(self, folder: Path):
        from trainflow.tasks.autoencoder_serving import autoencoder_schema

        return autoencoder_schema(folder)

    def serve(self, predictor: AutoencoderPredictor, model_input: Any, params: dict[str, Any]) -> Any:
        """Images in; reconstruction_mse (and, asked for, the reconstruction as PNG) out (tasks.autoencoder_serving)."""
        from trainflow.tasks.autoencoder_serving import serve_images

        return serve_images(predictor, model_input, params)

    def metric_function(self, names: list[str]) -> MetricFunction:
        return autoencoder_metrics

    def test_outputs(self, request: TestRequest):
        return predictor_test_outputs(self, request)


TASK = AutoencoderDefinition()
