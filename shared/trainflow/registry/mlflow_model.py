"""A trained model folder as an MLflow Model: a pyfunc from code, the folder as its artifact, a signature and an example.

Nothing is pickled: MLflow records `served_model.py` as the model's code, the weights stay the
folder's safetensors, and the task (a model config value) loads them back. The signature comes from
the task's ServingSchema, so serving tools see what a request holds and what it returns.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from trainflow.tasks.definition import ServingSchema, ServingTensor

SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
MODEL_FOLDER_ARTIFACT = "model_folder"
LOGGED_MODEL_NAME = "model"
# What the served model imports beyond the standard library (trainflow itself comes with its image).
RUNTIME_PACKAGES = ("mlflow", "torch", "safetensors", "numpy", "pandas", "pillow", "diffusers", "transformers")


def _schema(side: dict[str, str] | ServingTensor, optional: frozenset[str] = frozenset()):
    import numpy as np
    from mlflow.types import ColSpec, Schema, TensorSpec

    if isinstance(side, ServingTensor):
        return Schema([TensorSpec(np.dtype(side.dtype), side.shape)])
    return Schema([ColSpec(kind, name, required=name not in optional) for name, kind in side.items()])


def model_signature(schema: ServingSchema):
    """The MLflow ModelSignature of a task's ServingSchema (inputs, outputs, request parameters with defaults)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    kinds = {bool: "boolean", int: "long", float: "double", str: "string"}
    params = ParamSchema([ParamSpec(name, kinds[type(default)], default) for name, default in schema.params.items()])
    return ModelSignature(inputs=_schema(schema.inputs), outputs=_schema(schema.outputs, schema.optional_outputs),
                          params=params if schema.params else None)


def runtime_requirements() -> list[str]:
    """The installed versions of what the served model imports, pinned (those not installed are left out)."""
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def log_served_model(task: str, model_dir: str | Path):
    """Log `model_dir` as an MLflow Model in the active run; returns MLflow's ModelInfo.

    UserFacingError (from the task) when the folder is not that task's model.
    """
    import mlflow

    from trainflow.tasks import get_task

    definition = get_task(task)
    definition.load_for_prediction(Path(model_dir))  # a folder of another task fails here, in one sentence
    schema = definition.serving_schema(Path(model_dir))
    return mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME, python_model=str(SERVED_MODEL_CODE),
        artifacts={MODEL_FOLDER_ARTIFACT: str(model_dir)}, model_config={"task": task},
        signature=model_signature(schema), input_example=schema.example, pip_requirements=runtime_requirements(),
    )


def model_folder_in(mlflow_model_dir: str | Path) -> Path:
    """The trained model folder inside a downloaded MLflow Model (the folder itself for a version that is not one)."""
    root = Path(mlflow_model_dir)
    if not (root / "MLmodel").is_file():
        return root
    from mlflow.models import Model

    artifacts = Model.load(str(root)).flavors.get("python_function", {}).get("artifacts", {})
    relative = artifacts.get(MODEL_FOLDER_ARTIFACT, {}).get("path")
    return root / relative if relative else root
