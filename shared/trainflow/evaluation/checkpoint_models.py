"""A model rebuilt from a training checkpoint (the last one), for scoring beside the shipped best.

The train stage's record names its best and last checkpoint folders. The last
one lives on the checkpoint volume, which a later stage may not see: then it is
"not reachable", said in one sentence, and its scores are absent. Nothing about
it is ever guessed from the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from trainflow.training.checkpoints import STATE_FILE, CheckpointStore, LoadedCheckpoint
from trainflow.training.run_identity import load_trainable_state


@dataclasses.dataclass
class LastCheckpoint:
    """The last checkpoint, verified, or why it cannot be used (exactly one of the two is set)."""

    checkpoint: LoadedCheckpoint | None
    reason: str | None
    step: int | None = None


def read_last_checkpoint(record: dict[str, Any], dataset_sha256: str) -> LastCheckpoint:
    """Load and check the last checkpoint named by the train stage's record (trainflow_training.json).

    It must verify (checksums), and belong to this run: the same dataset and the
    step the record ends at. Returns LastCheckpoint with `reason` set otherwise.
    """
    named = record.get("last_checkpoint")
    if not named or named == "None":
        return LastCheckpoint(None, "the training record names no last checkpoint")
    folder = Path(named)
    if not (folder / STATE_FILE).is_file():
        return LastCheckpoint(None, f"the last checkpoint {folder} is not reachable from this stage (mount the "
                                    "train stage's checkpoint volume here, or it was pruned or deleted)")
    try:
        # load() uses none of the store's pruning settings; any values do.
        loaded = CheckpointStore(folder.parent, lower_is_better=True, keep_top_k=1, total_limit=2).load(folder)
    except (ValueError, OSError, json.JSONDecodeError, KeyError) as error:
        return LastCheckpoint(None, f"the last checkpoint {folder} cannot be read ({error})")
    saved_hash = loaded.state.get("identity", {}).get("dataset_sha256")
    if saved_hash != dataset_sha256 or loaded.state.get("step") != record.get("steps_run"):
        return LastCheckpoint(None, f"the checkpoint at {folder} belongs to another run (step {loaded.state.get('step')}, "
                                    f"dataset {str(saved_hash)[:12]}…), not to this model's (step {record.get('steps_run')}, "
                                    f"dataset {dataset_sha256[:12]}…)")
    return LastCheckpoint(loaded, None, int(loaded.state["step"]))


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: LoadedCheckpoint) -> torch.nn.Module:
    """Put a checkpoint's trained weights into `model` (built like the training run's): EMA weights when EMA was on,
    as the train stage exports them. Raises ValueError when the checkpoint does not fit the model."""
    load_trainable_state(model, checkpoint.tensors["model"])
    shadow = checkpoint.tensors.get("ema")
    if shadow:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if len(shadow) != len(trainable):
            raise ValueError(f"the checkpoint's EMA holds {len(shadow)} tensors for {len(trainable)} trainable parameters")
        with torch.no_grad():
            for index, param in enumerate(trainable):
                param.copy_(shadow[str(index)].to(param.device, param.dtype))
    return model.eval()
