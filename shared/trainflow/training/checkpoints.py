"""Checkpoints on disk: atomic, checksummed, safetensors + JSON, kept by rank and by age.

    <checkpoint_dir>/step-000000120/
        model.safetensors       trainable parameters and buffers
        optimizer.safetensors   optimizer state tensors (scalars and groups are in state.json)
        ema.safetensors         EMA shadow parameters, when EMA is on
        rng.safetensors         every rank's RNG state (uint8 bytes of JSON)
        state.json              step, epoch, sampler position, schedule, scaler, early stopping,
                                history, run identity, and the sha256 of every file above

A checkpoint folder is written beside its final name and renamed into place, so
a crash leaves the previous checkpoint intact; state.json's checksums catch a
file damaged later (a truncated copy, a bad disk), and the loader then falls
back to the previous checkpoint with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainflow.atomic_files import atomic_directory

STATE_FILE = "state.json"
_NAME = re.compile(r"^step-(\d{9})$")


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    path: Path
    step: int
    metric: float | None


@dataclasses.dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def optimizer_state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON (scalars, groups)."""
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        param_id, name = key.split(".", 1)
        per_param.setdefault(int(param_id), {})[name] = value
    return {"state": per_param, "param_groups": meta["param_groups"]}


class CheckpointStore:
    """Save, list, verify, load and prune the checkpoints of one run."""

    def __init__(self, root: Path, lower_is_better: bool, keep_top_k: int, total_limit: int) -> None:
        self.root = Path(root)
        self.lower_is_better = lower_is_better
        self.keep_top_k = keep_top_k
        self.total_limit = total_limit

    def save(self, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], metric: float | None) -> Path:
        """Write checkpoint `step` atomically, then prune; returns its folder."""
        target = self.root / f"step-{step:09d}"
        with atomic_directory(target) as staging:
            checksums = {}
            for stem, named in tensors.items():
                file = staging / f"{stem}.safetensors"
                save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(file))
                checksums[file.name] = _sha256(file)
            payload = {**state, "step": step, "metric": metric, "files": checksums}
            (staging / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        self.prune()
        return target

    def records(self) -> list[CheckpointRecord]:
        """Complete checkpoints (state.json present), oldest first. Half-written staging folders are ignored."""
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            match = _NAME.match(folder.name)
            state_file = folder / STATE_FILE
            if not match or not state_file.is_file():
                continue
            try:
                metric = json.loads(state_file.read_text(encoding="utf-8")).get("metric")
            except (json.JSONDecodeError, UnicodeDecodeError):
                metric = None
            found.append(CheckpointRecord(folder, int(match.group(1)), metric))
        return sorted(found, key=lambda r: r.step)

    def ranked(self) -> list[CheckpointRecord]:
        """Checkpoints that carry the monitored metric, best first (ties: the earlier step)."""
        scored = [r for r in self.records() if r.metric is not None]
        sign = 1.0 if self.lower_is_better else -1.0
        return sorted(scored, key=lambda r: (sign * r.metric, r.step))

    def best(self) -> CheckpointRecord | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def prune(self) -> None:
        """Keep the newest plus the top-k by the metric, never more than total_limit (best and newest always stay)."""
        records = self.records()
        if not records:
            return
        keep = [records[-1]]
        for record in self.ranked()[: self.keep_top_k]:
            if record not in keep:
                keep.append(record)
        keep = keep[: max(self.total_limit, 2)]
        for record in records:
            if record not in keep:
                shutil.rmtree(record.path, ignore_errors=True)
        # Staging folders left by a crash mid-write are never valid checkpoints.
        for leftover in self.root.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def load(self, path: Path) -> LoadedCheckpoint:
        """Read and verify one checkpoint; raises ValueError naming the damaged file."""
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        tensors = {}
        for name, expected in state["files"].items():
            file = path / name
            if not file.is_file():
                raise ValueError(f"{file} is missing")
            if _sha256(file) != expected:
                raise ValueError(f"{file} does not match its checksum (truncated or damaged)")
            tensors[name.removesuffix(".safetensors")] = load_file(str(file))
        return LoadedCheckpoint(path, state, tensors)

    def load_newest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
        for record in reversed(self.records()):
            try:
                return self.load(record.path)
            except (ValueError, OSError, json.JSONDecodeError, KeyError) as exc:
                print(f"train: warning: skipping checkpoint {record.path.name}: {exc}; trying the previous one",
                      file=sys.stderr, flush=True)
        return None

    def load_best(self) -> LoadedCheckpoint:
        for record in self.ranked():
            try:
                return self.load(record.path)
            except (ValueError, OSError, json.JSONDecodeError, KeyError) as exc:
                print(f"train: warning: best checkpoint {record.path.name} is unusable ({exc}); using the next best",
                      file=sys.stderr, flush=True)
        raise ValueError(f"no usable checkpoint with a validation metric in {self.root}")
