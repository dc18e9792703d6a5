"""Shared fixtures: small real assets built once per session, and a kfp.local runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub; missing weights must fail clearly instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from trainflow.demo.digits_dataset import write_digits_imagefolder

    folder = tmp_path_factory.mktemp("data") / "digits"
    write_digits_imagefolder(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """The demo's base-model recipe with a barely trained VAE: right shapes, seconds to build."""
    from trainflow.demo.tiny_stable_diffusion import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline(folder, seed=0, vae_steps=3)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory) -> Path:
    """A tiny SDXL-architecture pipeline (two text encoders, text_time UNet), built from configs in seconds."""
    from trainflow.demo.tiny_sdxl import build_tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    build_tiny_sdxl_pipeline(folder, seed=0, vae_steps=3)
    return folder


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory) -> Path:
    from trainflow.demo.classifier_training import train_digits_classifier
    from trainflow.models.image_classifier import save_classifier

    model, accuracy = train_digits_classifier(seed=0, epochs=2)
    assert accuracy > 0.5, "the test classifier must be informative for FID tests to mean anything"
    folder = tmp_path_factory.mktemp("models") / "digits-classifier"
    save_classifier(model, folder)
    return folder


@pytest.fixture
def local_runner(tmp_path):
    """kfp.local with subprocesses in this environment, outputs under tmp_path."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline-root"))
    return tmp_path / "pipeline-root"


def small_config(dataset_dir: Path, base_model: Path, classifier: Path, tmp: Path, **overrides) -> dict:
    """A run config sized for tests: a subset of the digits, 2 epochs, few generation steps."""
    config = {
        "run_name": "test-run",
        "task": "text_to_image",
        "seed": 0,
        "ingest": {"dataset_dir": str(dataset_dir), "resolution": 32, "label_column": "label", "max_records": 60},
        "model": {"base": str(base_model)},
        "cache": {"batch_size": 32, "storage_dtype": "float32"},
        "train": {"max_epochs": 2, "batch_size": 16, "optimizer": {"learning_rate": 1e-3}, "schedule": {"warmup_steps": 0},
                  "logging": {"tensorboard": False}},
        "evaluate": {"batch_size": 32},
        "score": {
            "generation": {"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 16},
            "fid_features": {"kind": "classifier", "path": str(classifier)},
            "prompt_classifier": str(classifier),
            "lpips": False,
        },
        "register": {
            "model_name": "test-model",
            "experiment": "tests",
            "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "gates": [],
        },
    }
    for section, values in overrides.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    return config
