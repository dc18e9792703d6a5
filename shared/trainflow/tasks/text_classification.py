"""Text classification: one class per text, from a table's text column (ingest.text_column) and label column.

The texts are tokenized once into a token cache (trainflow.tasks.text_classification_cache; batches are padded only to
their longest record, optionally bucketed by length). The model is a transformers encoder with a linear head
(trainflow.tasks.text_classification_model): a pretrained one from a folder or the Hugging Face cache, or a small BERT built
from model.text_encoder with a WordPiece tokenizer trained on the train split. Test metrics are the classifier's
(accuracy, macro-F1 with bootstrap intervals, ...) beside a scikit-learn TF-IDF + LogisticRegression baseline
fitted on the same train split.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainflow.config import CacheConfig, IngestConfig, ModelConfig, RunConfig, TrainConfig, looks_like_local_path
from trainflow.config.data_loading import TransformsConfig
from trainflow.config.text_encoder import TextEncoderConfig
from trainflow.config.training import DiffusionTrainingConfig
from trainflow.errors import UserFacingError
from trainflow.tasks.definition import (
    MetricFunction, MetricSpec, RecordNeeds, Reference, TaskDefinition, TestRequest, predictor_test_outputs,
)

TFIDF_BASELINE = Reference("TF-IDF + LogisticRegression (same split)", "baseline_tfidf_")
BASELINE_C_GRID = (0.1, 1.0, 10.0, 100.0)  # the baseline's regularisation, chosen on the val split like the model's epochs


def text_encoder_config(model_cfg: ModelConfig) -> TextEncoderConfig:
    return model_cfg.text_encoder or TextEncoderConfig()


class TextClassificationTraining:
    """The engine's view of a text classifier (see trainflow.training.task.Task)."""

    name = "text_classification"

    def __init__(self, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> None:
        from trainflow.tasks.text_classification_cache import TokenRecords, length_boundaries, read_token_cache_attrs
        from trainflow.tasks.losses import classification_loss

        self.cache_dir, self.model_cfg, self.seed = Path(cache_dir), model_cfg, seed
        self.text_cfg = text_encoder_config(model_cfg)
        self.attrs = read_token_cache_attrs(cache_dir)
        self.class_names = list(self.attrs["info"]["class_names"])
        buckets = self.text_cfg.length_buckets
        self.boundaries = length_boundaries(cache_dir, buckets) if buckets else None
        self._train = TokenRecords(cache_dir, "train", self.boundaries)
        self.loss = classification_loss(train_cfg.loss, self._train.labels, len(self.class_names))

    def build_model(self) -> nn.Module:
        from trainflow.tasks.text_classification_tokenizers import resolve_model_folder
        from trainflow.tasks.text_classification_model import TextClassifier, build_encoder

        pretrained = self.text_cfg.pretrained
        folder = resolve_model_folder(pretrained, "model.text_encoder.pretrained") if pretrained else None
        encoder = build_encoder(self.text_cfg, int(self.attrs["vocab_size"]), folder)
        return TextClassifier(encoder, len(self.class_names), self.text_cfg.pooling, self.model_cfg.dropout)

    def train_dataset(self):
        return self._train

    def val_dataset(self):
        from trainflow.tasks.text_classification_cache import TokenRecords

        return TokenRecords(self.cache_dir, "val", self.boundaries)

    def learning_rates(self) -> dict[str, float]:
        return {}  # encoder vs head: train.optimizer.module_learning_rates {encoder: ..., head: ...}

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(model(batch["input_ids"], batch["length"]).float(), batch["label"])

    def validation_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], batch["length"]).float()
        count = torch.tensor(float(len(logits)), device=logits.device)
        return {"loss_sum": self.loss(logits, batch["label"]) * count, "count": count,
                "correct": (logits.argmax(1) == batch["label"]).sum().float()}

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": float(totals["loss_sum"] / totals["count"]), "accuracy": float(totals["correct"] / totals["count"])}

    def export(self, model: nn.Module, folder: Path) -> None:
        from trainflow.tasks.text_classification_cache import TOKENIZER_FOLDER
        from trainflow.tasks.text_classification_model import save_text_classifier

        save_text_classifier(model, Path(folder), self.cache_dir / TOKENIZER_FOLDER, {
            "task": self.name, "class_names": self.class_names, "pooling": self.text_cfg.pooling,
            "max_length": self.text_cfg.max_length, "dropout": self.model_cfg.dropout})


class TextPredictor:
    """An exported text classifier: `predict(texts)` -> class probabilities; `record_outputs` on a token cache's test split."""

    task = "text_classification"

    def __init__(self, model: nn.Module, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.names = list(meta["class_names"])

    @torch.no_grad()
    def predict(self, texts: str | list[str]) -> torch.Tensor:
        """(N, K) class probabilities for raw texts, tokenized and truncated as the cache was."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.meta["max_length"], padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        lengths = encoded["attention_mask"].sum(1)
        return self.model(encoded["input_ids"].to(device), lengths.to(device)).float().softmax(1).cpu()

    @torch.no_grad()
    def record_outputs(self, cache_dir: Path, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities float64, labels) on the cache's test split in record order; UserFacingError when it is empty."""
        from trainflow.tasks.text_classification_cache import TokenRecords
        from trainflow.data.loading.batch_collate import collate_records

        test_set = TokenRecords(cache_dir, "test")
        if len(test_set) == 0:
            raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
        self.model = self.model.to(device).eval()
        outputs = []
        for batch in DataLoader(test_set, batch_size=batch_size, shuffle=False, collate_fn=collate_records):
            logits = self.model(batch["input_ids"].to(device), batch["length"].to(device)).float()
            outputs.append(logits.softmax(1).cpu().double())
        return torch.cat(outputs), test_set.labels.clone()


class TextClassificationDefinition(TaskDefinition):
    name = "text_classification"
    description = "one class per text (a table's text and label columns), on a transformers encoder"
    pipeline = "supervised"
    validation_metrics = ("val_loss", "val_accuracy")
    headline_metrics = (MetricSpec("accuracy", "accuracy"), MetricSpec("f1_macro", "macro F1"))
    summary_metrics = (MetricSpec("accuracy", "accuracy"), MetricSpec("f1_macro", "macro F1"),
                       MetricSpec("roc_auc", "ROC-AUC (one-vs-rest)"), MetricSpec("log_loss", "log loss"))
    output_names = ("probabilities", "labels")
    record_needs = RecordNeeds(required=frozenset({"caption", "label"}), classes_of="labels")
    baselines = (TFIDF_BASELINE,)
    compares_per_record = True
    config_fields = frozenset({"ingest.text_column", "model.text_encoder"})

    # ------------------------------------------------------------ config
    def check_config(self, ingest: IngestConfig | None, model: ModelConfig | None, train: TrainConfig | None) -> None:
        if ingest is not None:
            if not ingest.table:
                given = next(f for f in ("dataset_dir", "hdf5", "sklearn_dataset") if getattr(ingest, f))
                raise ValueError(f"ingest.{given}: text_classification reads a table of texts (ingest.table, a CSV, "
                                 "JSONL or Parquet file with ingest.text_column and ingest.label_column), not images or arrays")
            if not ingest.text_column:
                raise ValueError("ingest.text_column: text_classification needs the name of the table column holding the text")
            if not ingest.label_column:
                raise ValueError("ingest.label_column: text_classification needs the name of the table column holding the class")
            for field in ("buckets", "prior_preservation", "target_columns", "feature_columns", "mask_column"):
                if getattr(ingest, field):
                    raise ValueError(f"ingest.{field}: does not apply to text_classification; remove it")
            if ingest.alpha_mask:
                raise ValueError("ingest.alpha_mask: applies to text_to_image only, not text_classification")
        if model is not None:
            for field in ("architecture", "base", "weights_path"):
                if getattr(model, field):
                    raise ValueError(f"model.{field}: text_classification builds a transformers encoder; remove it and "
                                     "configure model.text_encoder (pretrained folder, or the sizes of a built one)")
        if train is not None:
            if train.transforms != TransformsConfig():
                raise ValueError("train.transforms: image transforms do not apply to text_classification; remove them")
            if train.diffusion != DiffusionTrainingConfig():
                raise ValueError("train.diffusion: these options apply to text_to_image only, not text_classification")
        super().check_config(ingest, model, train)

    def local_paths(self, config: RunConfig) -> dict[str, str]:
        text_cfg = text_encoder_config(config.model)
        return {f"model.text_encoder.{field}": value for field, value in
                (("pretrained", text_cfg.pretrained), ("tokenizer", text_cfg.tokenizer))
                if value and looks_like_local_path(value)}

    def check_local_files(self, config: RunConfig) -> None:
        """The tokenizer must belong to the encoder, and max_length fit its position embeddings."""
        from trainflow.tasks.text_classification_tokenizers import load_tokenizer, resolve_model_folder
        from trainflow.tasks.text_classification_cache import cache_tokenizer

        text_cfg = text_encoder_config(config.model)
        if not text_cfg.pretrained:
            if text_cfg.tokenizer:  # a built encoder takes its vocabulary size from the tokenizer
                load_tokenizer(resolve_model_folder(text_cfg.tokenizer, "model.text_encoder.tokenizer"), "model.text_encoder.tokenizer")
            return
        cache_tokenizer(text_cfg, [])  # the same checks build_cache makes, before anything runs

    # ------------------------------------------------------------ data and training
    def build_cache(self, dataset_dir: str, cache_dir: str, model_cfg: ModelConfig, cache_cfg: CacheConfig) -> dict[str, Any]:
        from trainflow.tasks.text_classification_cache import build_token_cache

        return build_token_cache(dataset_dir, cache_dir, text_encoder_config(model_cfg))

    def training_task(self, cache_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> TextClassificationTraining:
        return TextClassificationTraining(cache_dir, model_cfg, train_cfg, seed)

    # ------------------------------------------------------------ evaluation
    def load_for_prediction(self, folder: Path) -> TextPredictor:
        from trainflow.tasks.text_classification_model import load_text_classifier

        model, tokenizer, meta = load_text_classifier(Path(folder))
        return TextPredictor(model, tokenizer, meta)

    def serving_schema(self, folder: Path):
        from trainflow.tasks.supervised_serving import read_folder_config
        from trainflow.tasks.text_classification_serving import text_classification_schema

        return text_classification_schema(list(read_folder_config(folder)["class_names"]))

    def serve(self, predictor: TextPredictor, model_input: Any, params: dict[str, Any]) -> Any:
        """A `text` column in; predicted_class and probability_<class> columns out (tasks.text_classification_serving)."""
        from trainflow.tasks.text_classification_serving import serve_texts

        return serve_texts(predictor, model_input, params)

    def test_outputs(self, request: TestRequest):
        return predictor_test_outputs(self, request)

    def metric_function(self, names: list[str]) -> MetricFunction:
        from trainflow.metrics.supervised import classification_metrics

        return functools.partial(classification_metrics, class_names=names)

    def extra_results(self, cache_dir: Path, model_dir: Path, metric_fn: MetricFunction) -> dict[str, Any]:
        """scikit-learn TF-IDF (words and word pairs) + LogisticRegression on the same train split, C chosen on val."""
        from trainflow.tasks.text_baseline import tfidf_logistic_probabilities

        probabilities, labels, chosen = tfidf_logistic_probabilities(Path(cache_dir), BASELINE_C_GRID)
        scores = metric_fn(probabilities=probabilities, labels=labels)
        results: dict[str, Any] = {f"{TFIDF_BASELINE.prefix}{k}": v for k, v in scores.items()
                                   if k in ("accuracy", "f1_macro", "roc_auc", "log_loss") and isinstance(v, float)}
        results[f"{TFIDF_BASELINE.prefix}C"] = chosen
        return results

    def report_section(self, scored, results: dict[str, Any]) -> str:
        from trainflow.report.evaluation_sections import classification_section

        return classification_section(scored, results)

    def log_kfp_metrics(self, artifact: Any, scored, results: dict[str, Any]) -> bool:
        from trainflow.report.kfp_classification import log_classification_metrics

        log_classification_metrics(artifact, results["confusion_matrix"], scored.outputs["best"], scored.truth, scored.names)
        return True


TASK = TextClassificationDefinition()
