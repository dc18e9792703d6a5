"""A supervised model on disk: `config.json` (how to rebuild it, plus meta) and `model.safetensors`.

The folder is self-contained: the weights include the input normalisation
buffers, and `config.json` holds every `build_model` argument, so
`load_model_folder` needs nothing but the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_model

from trainflow.atomic_files import atomic_directory
from trainflow.config.model import ModelConfig
from trainflow.errors import MissingWeightsError, UserFacingError
from trainflow.models.zoo import SupervisedModel, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER_FORMAT = "trainflow-supervised-model"
FOLDER_FORMAT_VERSION = 1
# Build arguments that live in ModelConfig; the rest are build_model's keyword arguments.
_MODEL_CONFIG_KEYS = ("architecture", "hidden_sizes", "width", "dropout")
SEGMENTATION_TASK_NAMES = frozenset({"segmentation"})  # format 1 folders recorded the task, not the output shape


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def save_model_folder(model: torch.nn.Module, folder: str | Path, meta: dict[str, Any]) -> None:
    """Write `folder` atomically: config.json (architecture, build arguments, `meta`) and model.safetensors.

    `model` is what `build_model` returned, possibly wrapped in DDP or torch.compile; `meta` is any
    JSON-serialisable dict (class_names, target_names, ...). Tied/shared tensors are stored once.
    Raises TypeError for a model that `build_model` did not build (it could not be rebuilt).
    """
    network = _unwrap(model)
    if not isinstance(network, SupervisedModel):
        raise TypeError(f"save_model_folder takes a model from trainflow.models.zoo.build_model, not {type(network).__name__}")
    config = {"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION,
              "architecture": network.build_config["architecture"], "build": network.build_config, "meta": meta}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    with atomic_directory(folder) as staging:
        (staging / CONFIG_FILE).write_text(text)
        # save_model (not save_file) drops duplicate names of shared tensors, which save_file refuses.
        save_model(network, str(staging / WEIGHTS_FILE), metadata={"format": FOLDER_FORMAT})


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`, with shared tensors that save_model stored once restored under every name."""
    with safe_open(str(path), framework="pt") as handle:
        aliases = handle.metadata() or {}
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    # save_model records each dropped duplicate in the metadata as {dropped name: kept name}.
    for dropped, kept in aliases.items():
        if dropped not in state and kept in state:
            state[dropped] = state[kept]
    return state


def load_model_folder(folder: str | Path) -> tuple[SupervisedModel, dict[str, Any]]:
    """Rebuild the model saved in `folder` and load its weights; returns (model in eval mode, meta).

    `meta` is what was saved (the exporting task names itself under `task`), with `architecture` added when absent.
    Raises MissingWeightsError naming a missing file, UserFacingError for a folder
    written by something else or weights that do not fit the saved architecture.
    """
    root = Path(folder).expanduser()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise MissingWeightsError(f"model file {root / name} is missing; point at a folder written by trainflow's "
                                      "train stage (config.json + model.safetensors)")
    config_path = root / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserFacingError(f"{config_path} is not valid JSON ({error}); point at a folder written by trainflow") from error
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise UserFacingError(f"{config_path} was not written by trainflow's supervised tasks (no format "
                              f"{FOLDER_FORMAT!r}); point at a model folder from a trainflow classification, "
                              "regression or segmentation run")
    if config.get("format_version") != FOLDER_FORMAT_VERSION:
        raise UserFacingError(f"{config_path} has format_version {config.get('format_version')!r}; this trainflow "
                              f"reads version {FOLDER_FORMAT_VERSION}, so upgrade trainflow to load it")
    try:
        build = dict(config["build"])
        cfg = ModelConfig(**{key: build.pop(key) for key in _MODEL_CONFIG_KEYS})
        if "task" in build:  # folders written before the zoo took `per_pixel`: only segmentation was per pixel
            build["per_pixel"] = build.pop("task") in SEGMENTATION_TASK_NAMES
        model = build_model(cfg, **build)
    except (KeyError, TypeError, ValueError) as error:  # ValueError covers pydantic's ValidationError
        raise UserFacingError(f"{config_path} has an incomplete or invalid 'build' section ({error}); re-export the model") from error
    try:
        model.load_state_dict(_read_weights(root / WEIGHTS_FILE), strict=True)
    except Exception as error:  # corrupt header, wrong keys or shapes: all mean this file does not belong here
        reason = " ".join(str(error).split())
        raise UserFacingError(f"{root / WEIGHTS_FILE} does not match {config_path} ({type(error).__name__}: "
                              f"{reason}); re-export the model") from error
    meta = dict(config.get("meta") or {})
    meta.setdefault("architecture", model.build_config["architecture"])
    return model.eval(), meta
