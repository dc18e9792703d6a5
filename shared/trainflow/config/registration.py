"""The `register` section: MLflow tracking, the registry name and the gates a model must pass."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from trainflow.config.names import PlainText, check_champion_alias, check_experiment_name, check_model_name
from trainflow.config.schema_base import Section
from trainflow.errors import UserFacingError
from trainflow.metrics.metric_directions import is_lower_better


class Gate(Section):
    metric: str
    min: float | None = None
    max: float | None = None
    beat_base: bool = Field(False, description="Require the fine-tuned model to beat the base model on this metric.")
    beat_champion: bool = Field(False, description=(
        "Compare the candidate with the registered champion (the model's `champion_alias` version) on this "
        "metric, per test record with a paired bootstrap: it takes the champion alias only when the lower end of "
        "the improvement's interval is above promotion_margin, else it stays challenger. Not a registration gate. "
        "Classification, regression and segmentation only."))
    confidence: float = Field(0.95, gt=0.5, lt=1, description="beat_champion: the confidence level of the improvement's interval (ignored by other conditions).")

    @model_validator(mode="after")
    def _has_a_condition(self) -> "Gate":
        if self.min is None and self.max is None and not self.beat_base and not self.beat_champion:
            raise ValueError(f"gate on {self.metric!r} needs at least one of min, max, beat_base, beat_champion")
        if self.beat_base or self.beat_champion:
            try:  # a comparison needs a direction; the one table decides it, here rather than after training
                is_lower_better(self.metric)
            except UserFacingError as error:
                raise ValueError(str(error)) from None
        return self


class RegisterConfig(Section):
    model_name: Annotated[str, AfterValidator(check_model_name)] = Field(description=(
        "MLflow registered model: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 200."))
    experiment: Annotated[str, AfterValidator(check_experiment_name)] = "trainflow"
    # None: MLFLOW_TRACKING_URI if set, else the project-local SQLite store.
    tracking_uri: PlainText | None = None
    gates: list[Gate] = []

    @field_validator("tracking_uri")
    @classmethod
    def _no_token_in_the_query(cls, value: str | None) -> str | None:
        from trainflow.redaction import has_secret_query

        if value and has_secret_query(value):  # MLflow sends no query string; it reads a token from the environment
            raise ValueError("a token in the URI's query is not read by MLflow and would be recorded; remove it and "
                             "set MLFLOW_TRACKING_TOKEN in the environment instead (user:password@ in the URI is fine: "
                             "trainflow passes it to the stages through the environment)")
        return value
    champion_alias: Annotated[str, AfterValidator(check_champion_alias)] = Field("champion", min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description=(
        "MLflow alias of the current best version: a new version is compared with it and takes it only when it "
        "beats it by promotion_margin (or when there is no champion yet)."))
    challenger_alias: Annotated[str, AfterValidator(check_champion_alias)] = Field("challenger", min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description=(
        "MLflow alias every version that passes the gates takes."))
    promotion_margin: float = Field(0.0, ge=0, le=1e12, allow_inf_nan=False, description=(
        "How much better than the champion a challenger must be to take the champion alias, in the metric's units: "
        "the lower end of the paired-bootstrap interval of the improvement (tasks with per-record outputs) or the "
        "improvement of the recorded value (text-to-image)."))
    comparison_resamples: int = Field(1000, ge=100, le=1_000_000, description="Paired bootstrap resamples of the champion comparison.")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Batch size when the champion is run on the test split.")
    device: PlainText = Field("auto", description="Where the champion is run on the test split.")
