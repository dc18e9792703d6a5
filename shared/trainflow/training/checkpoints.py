"""Checkpoints on disk: atomic, covered file by file by a manifest, safetensors + JSON, kept by rank and by age.

    <checkpoint_dir>/step-000000120/
        model.safetensors       trainable parameters and buffers
        optimizer.safetensors   optimizer state tensors (scalars and groups are in state.json)
        ema.safetensors         EMA shadow parameters, when EMA is on
        rng.safetensors         every rank's RNG state (uint8 bytes of JSON)
        state.json              step, epoch, sampler position, schedule, scaler, early stopping,
                                history, run identity
        manifest.json           step, metric, the sha256 of every file above (state.json included)
                                and of its own content

A checkpoint folder is written beside its final name and renamed into place, so
a crash leaves the previous checkpoint intact. The manifest catches a folder
changed later: a truncated copy, a bad disk, an edited state.json, a file added
or removed. Any failure to read or apply a checkpoint (checksums, JSON,
safetensors, a tensor that does not fit the model) makes the engine fall back
to the previous checkpoint with one warning line; when none is usable it stops
with one sentence rather than start over, so nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from trainflow.atomic_files import atomic_directory
from trainflow.errors import UserFacingError

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step-(\d{9})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointUnusable(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file and the fault."""


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


def _content_digest(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's content without its own digest (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _manifest_text(manifest: dict[str, Any]) -> str:
    """The one serialization of a manifest: reading compares the file with it byte for byte."""
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def seal(folder: Path, step: int, metric: float | None) -> None:
    """Write `folder`'s manifest: the checksum of every file in it (written last: it vouches for the rest)."""
    files = {p.name: _sha256(p) for p in sorted(Path(folder).iterdir()) if p.name != MANIFEST_FILE}
    manifest: dict[str, Any] = {"step": step, "metric": metric, "files": files}
    manifest["manifest_sha256"] = _content_digest(manifest)
    (Path(folder) / MANIFEST_FILE).write_text(_manifest_text(manifest), encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The verified manifest of `folder` (its own digest and the folder's step). Raises CheckpointUnusable."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointUnusable(f"{MANIFEST_FILE} is missing (the folder was not written by trainflow, or was damaged)")
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: it would turn \r\n into \n unseen
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointUnusable(f"{MANIFEST_FILE} is not valid JSON ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    metric = manifest.get("metric") if isinstance(manifest, dict) else None
    if (not isinstance(files, dict) or not all(isinstance(v, str) and _SHA256.match(v) for v in files.values())
            or not isinstance(metric, (int, float, type(None))) or isinstance(metric, bool)):
        raise CheckpointUnusable(f"{MANIFEST_FILE} does not have the shape trainflow writes")
    if manifest.get("manifest_sha256") != _content_digest(manifest):
        raise CheckpointUnusable(f"{MANIFEST_FILE} does not match its own checksum (edited or damaged)")
    if text != _manifest_text(manifest):  # same content, other bytes (whitespace added or removed): edited
        raise CheckpointUnusable(f"{MANIFEST_FILE} is not byte for byte what trainflow wrote (edited or damaged)")
    match = _NAME.match(Path(folder).name)
    if match and manifest.get("step") != int(match.group(1)):
        raise CheckpointUnusable(f"{MANIFEST_FILE} is for step {manifest.get('step')}, not the folder's {int(match.group(1))}")
    return manifest


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Any failure to parse file `name` becomes CheckpointUnusable naming it."""
    try:
        yield
    except CheckpointUnusable:
        raise
    except Exception as exc:
        raise CheckpointUnusable(f"{name}: {type(exc).__name__}: {_one_line(exc)}") from None


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


def check_tensors_fit(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: str) -> None:
    """Same names, shapes and dtypes as `expected` (a load would cast a dtype silently). Raises CheckpointUnusable."""
    if set(saved) != set(expected):
        extra, missing = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
        raise CheckpointUnusable(f"{file} does not fit the model (unexpected {extra[:3]}, missing {missing[:3]})")
    for name, value in saved.items():
        want = expected[name]
        if value.shape != want.shape or value.dtype != want.dtype:
            raise CheckpointUnusable(f"{file}: {name} is {value.dtype} {tuple(value.shape)}, the model's is "
                                     f"{want.dtype} {tuple(want.shape)}")


def check_optimizer_fits(tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Every saved optimizer tensor is a scalar or has its parameter's shape (load_state_dict checks neither)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_groups = meta["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointUnusable("optimizer state does not fit the optimizer (other parameter groups)")
    for key, value in tensors.items():
        param_id, _, name = key.partition(".")
        if not param_id.isdigit() or int(param_id) >= len(params):
            raise CheckpointUnusable(f"optimizer.safetensors: {key} names no parameter")
        if value.dim() and value.shape != params[int(param_id)].shape:
            raise CheckpointUnusable(f"optimizer.safetensors: {key} is {tuple(value.shape)}, its parameter "
                                     f"{tuple(params[int(param_id)].shape)}")


class CheckpointStore:
    """Save, list, verify, load and prune the checkpoints of one run."""

    def __init__(self, root: Path, lower_is_better: bool, keep_top_k: int, total_limit: int) -> None:
        self.root = Path(root)
        self.lower_is_better = lower_is_better
        self.keep_top_k = keep_top_k
        self.total_limit = total_limit

    def save(self, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], metric: float | None) -> Path:
        """Write checkpoint `step` atomically, then prune; returns its folder.

        A full disk (or quota) is a UserFacingError naming the folder and the previous checkpoint, which the
        atomic write leaves intact; the half-written one is removed.
        """
        target = self.root / f"step-{step:09d}"
        try:
            with atomic_directory(target) as staging:
                for stem, named in tensors.items():
                    save_file({k: v.detach().contiguous().cpu() for k, v in named.items()}, str(staging / f"{stem}.safetensors"))
                payload = {**state, "step": step, "metric": metric}
                (staging / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
                seal(staging, step, metric)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = [r.path.name for r in self.records()]
            raise UserFacingError(
                f"no space left on the device holding {self.root} while writing checkpoint {target.name}; the previous "
                f"checkpoint ({kept[-1] if kept else 'none yet'}) is intact. Free space there and re-run: training "
                "resumes from it") from None
        self.prune()
        return target

    def records(self) -> list[CheckpointRecord]:
        """Checkpoint folders, oldest first, with the metric their manifest vouches for (None if unreadable).

        Staging folders (`.step-*`) are ignored; a damaged folder is listed, and fails when loaded.
        """
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            match = _NAME.match(folder.name)
            if not match or not folder.is_dir():
                continue
            try:
                metric = read_manifest(folder)["metric"]
            except (CheckpointUnusable, OSError):
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
        """Read and verify one checkpoint. Raises CheckpointUnusable naming the damaged file (relative to `path`),
        whatever the fault."""
        try:
            return self._load(Path(path))
        except CheckpointUnusable:
            raise
        except Exception as exc:  # safetensors, JSON, OS: every way a file can be bad ends here
            raise CheckpointUnusable(f"{type(exc).__name__}: {_one_line(exc)}") from None

    def _load(self, path: Path) -> LoadedCheckpoint:
        manifest = read_manifest(path)
        present = {p.name for p in path.iterdir()} - {MANIFEST_FILE}
        listed = set(manifest["files"])
        if listed - present:
            raise CheckpointUnusable(f"{sorted(listed - present)[0]} is missing")
        if present - listed:
            raise CheckpointUnusable(f"the folder holds files its manifest does not list: {sorted(present - listed)[:3]}")
        for name, expected in manifest["files"].items():
            if _sha256(path / name) != expected:
                raise CheckpointUnusable(f"{name} does not match its checksum (truncated, edited or damaged)")
        with _reading(STATE_FILE):
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("step") != manifest["step"]:
            raise CheckpointUnusable(f"{STATE_FILE} is not the state of step {manifest['step']}")
        tensors = {}
        for name in sorted(name for name in listed if name.endswith(".safetensors")):
            with _reading(name):
                tensors[name.removesuffix(".safetensors")] = load_file(str(path / name))
        return LoadedCheckpoint(path, state, tensors)

    def resume_newest(self, restore: Callable[[LoadedCheckpoint], None], warn: Callable[[str], None]) -> LoadedCheckpoint | None:
        """Load the newest checkpoint and `restore` it; on any failure, warn in one line and try the previous one.

        Returns the checkpoint restored, or None when there is none. A UserFacingError from `restore` (e.g. the
        checkpoints belong to another run) is raised as it is. Failure: UserFacingError when checkpoints exist
        but none is usable: starting over would hide the damage and let the new run's pruning delete the folders.
        """
        problems = []
        for record in reversed(self.records()):
            try:
                checkpoint = self.load(record.path)
                restore(checkpoint)
                return checkpoint
            except UserFacingError:
                raise
            except Exception as exc:  # any failure to read or apply: the previous checkpoint may still be good
                reason = (str(exc) if isinstance(exc, CheckpointUnusable)
                          else f"it does not fit this run ({type(exc).__name__}: {_one_line(exc)})")
                problems.append(f"{record.path.name}: {reason}")
                warn(f"train: warning: skipping checkpoint {record.path.name}: {reason}; trying the previous one")
        if problems:
            raise UserFacingError(
                f"no usable checkpoint in {self.root} ({len(problems)} damaged, newest first: {'; '.join(problems)[:600]}); "
                f"move the folder aside to keep it, or delete it (or use `trainflow run --fresh`) to start over")
        return None

    def load_newest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies; damaged ones are skipped with a warning on stderr."""
        return self.resume_newest(lambda checkpoint: None, lambda line: print(line, file=sys.stderr, flush=True))

    def load_best(self) -> LoadedCheckpoint:
        for record in self.ranked():
            try:
                return self.load(record.path)
            except CheckpointUnusable as exc:
                print(f"train: warning: best checkpoint {record.path.name} is unusable ({exc}); using the next best",
                      file=sys.stderr, flush=True)
        raise ValueError(f"no usable checkpoint with a validation metric in {self.root}")
