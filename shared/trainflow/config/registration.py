"""The `register` section: MLflow tracking, the registry name and the gates a model must pass."""

from __future__ import annotations

from pydantic import Field, model_validator

from trainflow.config.schema_base import Section


class Gate(Section):
    metric: str
    min: float | None = None
    max: float | None = None
    beat_base: bool = Field(False, description="Require the fine-tuned model to beat the base model on this metric.")

    @model_validator(mode="after")
    def _has_a_condition(self) -> "Gate":
        if self.min is None and self.max is None and not self.beat_base:
            raise ValueError(f"gate on {self.metric!r} needs at least one of min, max, beat_base")
        return self


class RegisterConfig(Section):
    model_name: str = Field(min_length=1)
    experiment: str = "trainflow"
    # None: MLFLOW_TRACKING_URI if set, else the project-local SQLite store.
    tracking_uri: str | None = None
    gates: list[Gate] = []
