"""A small untrained-but-real classifier folder and a register call, for registry tests that need no training."""

from __future__ import annotations

from pathlib import Path

from trainflow.artifacts import LocalArtifact

FEATURES = ["f1", "f2", "f3"]
CLASSES = ["a", "b"]


def table_classifier(folder: Path, seed: int = 0) -> Path:
    """An MLP over three features and two classes, saved as the train stage saves one (weights from `seed`)."""
    import torch

    from trainflow.config import ModelConfig
    from trainflow.models.model_folder import save_model_folder
    from trainflow.models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(architecture="mlp", hidden_sizes=[4]), per_pixel=False, in_channels=3,
                        in_features=len(FEATURES), num_outputs=len(CLASSES), input_mean=[1.0, 2.0, 3.0],
                        input_std=[1.0, 1.0, 1.0])
    save_model_folder(model, folder, {"task": "classification", "kind": "table", "class_names": CLASSES,
                                      "target_names": [], "feature_names": FEATURES})
    return folder


def register_table_model(model_dir: Path, tracking_uri: str, report: Path, pipeline_run_id: str = "",
                         metrics: dict | None = None, params: dict | None = None, gates: list | None = None) -> dict:
    from trainflow.stages.register_model import register_model

    config = {"model_name": "table", "experiment": "tests", "tracking_uri": tracking_uri, "gates": gates or []}
    return register_model(str(model_dir), {"content_sha256": "0" * 64}, metrics or {"accuracy": 0.75}, {}, config,
                          "table-run", params or {"seed": 0}, LocalArtifact(str(report)), task="classification",
                          pipeline_run_id=pipeline_run_id)
