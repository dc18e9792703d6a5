"""Regression: one or more numeric targets per record (feature rows or images).

Training uses targets standardised with the train split's mean and std (so one learning rate fits
any target scale); the model folder records them and predictions come back in the targets' units.
A table model is scored beside scikit-learn's LinearRegression fitted on the same train split.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import torch

from trainflow.config import IngestConfig
from trainflow.config.training import LossConfig
from trainflow.tasks.definition import MetricFunction, MetricSpec, RecordNeeds, Reference
from trainflow.tasks.supervised import SupervisedDefinition, SupervisedTraining

LINEAR_BASELINE = Reference("scikit-learn LinearRegression (same split)", "baseline_linear_")


class RegressionTraining(SupervisedTraining):
    def build_loss(self, cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        from trainflow.tasks.losses import regression_loss

        self.target_mean = torch.tensor(self.stats["target_mean"], dtype=torch.float32)
        self.target_std = torch.tensor(self.stats["target_std"], dtype=torch.float32)
        return regression_loss(cfg, len(self.target_names))

    def num_outputs(self) -> int:
        return len(self.target_names)

    def target_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch["targets"]
        return (targets - self.target_mean.to(targets.device)) / self.target_std.to(targets.device)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs in the targets' units (the model predicts standardised targets)."""
        return outputs * self.target_std.to(outputs.device) + self.target_mean.to(outputs.device)

    def validation_sums(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        error = self.predict(outputs) - batch["targets"]
        return {"squared_error_sum": (error ** 2).mean(1).sum(), "absolute_error_sum": error.abs().mean(1).sum()}

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        count = totals["count"]
        return {"mse": float(totals["squared_error_sum"] / count), "mae": float(totals["absolute_error_sum"] / count)}

    def export_meta(self) -> dict[str, Any]:
        return {"target_mean": self.stats["target_mean"], "target_std": self.stats["target_std"]}


class RegressionDefinition(SupervisedDefinition):
    name = "regression"
    description = "numeric targets per feature row or image"
    validation_metrics = ("val_loss", "val_mse", "val_mae")
    headline_metrics = (MetricSpec("r2", "R²"), MetricSpec("rmse", "RMSE"), MetricSpec("mae", "MAE"))
    summary_metrics = (MetricSpec("r2", "R²"), MetricSpec("rmse", "RMSE"), MetricSpec("mae", "MAE"), MetricSpec("mse", "MSE"))
    output_names = ("predictions", "targets")
    record_needs = RecordNeeds(required=frozenset({"targets"}))
    baselines = (LINEAR_BASELINE,)
    training_class = RegressionTraining
    truth_key = "targets"
    names_key = "target_names"

    def check_ingest(self, ingest: IngestConfig) -> None:
        if not (ingest.target_columns or ingest.sklearn_dataset == "diabetes"):
            raise ValueError("ingest.target_columns: regression needs at least one numeric target column (or sklearn_dataset: diabetes)")

    def readable_outputs(self, outputs: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        return outputs * torch.tensor(meta["target_std"]) + torch.tensor(meta["target_mean"])

    def stored_truth(self, truth: torch.Tensor) -> torch.Tensor:
        return truth.double()

    def serving_outputs(self, folder: Path) -> dict[str, str]:
        from trainflow.tasks.supervised_serving import read_folder_config

        return {name: "double" for name in read_folder_config(folder)["meta"]["target_names"]}

    def served(self, readable: torch.Tensor, names: list[str]) -> Any:
        from trainflow.tasks.supervised_serving import regression_frame

        return regression_frame(readable, names)

    def metric_function(self, names: list[str]) -> MetricFunction:
        from trainflow.metrics.supervised import regression_metrics

        return functools.partial(regression_metrics, target_names=names)

    def extra_results(self, cache_dir: Path, model_dir: Path, metric_fn: MetricFunction) -> dict[str, Any]:
        """For a table model: scikit-learn's LinearRegression fitted on the same train split, scored on the same test split."""
        config = Path(model_dir) / "config.json"
        if not (config.is_file() and json.loads(config.read_text()).get("meta", {}).get("kind") == "table"):
            return {}
        from sklearn.linear_model import LinearRegression

        from trainflow.data.cache.supervised_cache import SupervisedCache

        train, test = SupervisedCache(cache_dir, "train"), SupervisedCache(cache_dir, "test")
        fitted = LinearRegression().fit(train.arrays["features"].double().numpy(), train.arrays["targets"].double().numpy())
        predictions = torch.from_numpy(fitted.predict(test.arrays["features"].double().numpy()))
        baseline = metric_fn(predictions=predictions, targets=test.arrays["targets"].double())
        return {f"{LINEAR_BASELINE.prefix}{k}": baseline[k] for k in ("r2", "rmse", "mae", "mse")
                if isinstance(baseline.get(k), float)}

    def report_section(self, scored, results: dict[str, Any]) -> str:
        from trainflow.report.evaluation_sections import regression_section

        return regression_section(scored, results)


TASK = RegressionDefinition()
