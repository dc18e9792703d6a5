"""The Python model every registered trainflow version runs, logged with MLflow's models-from-code (never pickled).

MLflow copies this file into the model and executes it at load time; `set_model` names the model.
The trained model folder (safetensors weights, configs) travels as the artifact `model_folder`; the
task, from the model's config, loads it back with its own `load_for_prediction` and answers requests
with its `serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class TrainflowServedModel(PythonModel):
    def load_context(self, context) -> None:
        from trainflow.tasks import get_task

        self.definition = get_task(context.model_config["task"])
        self.predictor = self.definition.load_for_prediction(Path(context.artifacts["model_folder"]))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        return self.definition.serve(self.predictor, model_input, params or {})


mlflow.models.set_model(TrainflowServedModel())
