"""`trainflow prune-runs`: remove old run folders (checkpoints, copied caches, TensorBoard) from the workspace.

Each pipeline run writes `<workspace>/runs/<KFP run id>/<task>/` (train_launch.run_folder), and
nothing removes it when the run ends: a retried pod must find its checkpoints there. The registered
model does not live there (register copies it into MLflow), so a finished run's folder is only a
way to resume or to look back. This keeps the newest `keep_last` runs and every run written in the
last `keep_days` days, and removes the rest.

A run's age is the newest modification time of anything inside it, so a run still writing
checkpoints is never old. Only folders that look like trainflow's (a task folder holding
checkpoints/, tensorboard/, train-request.json, or a preflight folder) are considered; anything
else under the folder is left alone and reported. A removal first renames the folder to a hidden
name, so a pod never resumes from a half-deleted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

from trainflow.errors import UserFacingError

TASK_MARKERS = ("checkpoints", "tensorboard", "train-request.json")
SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: Path
    last_write: float  # newest mtime of the folder or anything in it (seconds since the epoch)
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class PruneResult:
    removed: list[RunFolder]
    kept: list[RunFolder]
    ignored: list[Path]  # not trainflow run folders


def _is_run_folder(path: Path) -> bool:
    tasks = [child for child in path.iterdir() if child.is_dir()]
    return any(task.name == "preflight" or any((task / marker).exists() for marker in TASK_MARKERS) for task in tasks)


def _measure(path: Path) -> RunFolder:
    newest, size = path.stat().st_mtime, 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                info = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walk (a checkpoint being replaced)
                continue
            newest = max(newest, info.st_mtime)
            size += info.st_size if name in files else 0
    return RunFolder(path, newest, size)


def plan_pruning(runs_dir: str | Path, keep_last: int, keep_days: float, now: float | None = None) -> PruneResult:
    """Which run folders under `runs_dir` to remove and keep; nothing is changed.

    Raises UserFacingError when `runs_dir` is not a folder or the limits are negative.
    """
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise UserFacingError(f"{runs} is not a folder; give the workspace's runs folder, e.g. /workspace/runs")
    if keep_last < 0 or keep_days < 0:
        raise UserFacingError(f"--keep-last ({keep_last}) and --keep-days ({keep_days}) must be 0 or more")
    now = time.time() if now is None else now
    candidates, ignored = [], []
    for child in sorted(runs.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or child.is_symlink():
            continue
        (candidates if _is_run_folder(child) else ignored).append(child)
    folders = sorted((_measure(path) for path in candidates), key=lambda run: run.last_write, reverse=True)
    removed, kept = [], []
    for rank, run in enumerate(folders):
        young = now - run.last_write < keep_days * SECONDS_PER_DAY
        (kept if rank < keep_last or young else removed).append(run)
    return PruneResult(removed, kept, ignored)


def remove_run_folder(run: RunFolder) -> None:
    """Rename to a hidden sibling first (a retried pod then finds no half-deleted checkpoints), then delete."""
    doomed = run.path.with_name(f".{run.path.name}.removing")
    try:
        os.replace(run.path, doomed)
        shutil.rmtree(doomed)
    except OSError as exc:
        raise UserFacingError(f"cannot remove {run.path} ({exc.strerror or exc}); the folders listed above were "
                              f"removed, any rest of this one is in {doomed}; run prune-runs where the workspace is "
                              "writable") from None


def prune_runs(runs_dir: str | Path, keep_last: int, keep_days: float, dry_run: bool = False,
               verbose: bool = False, now: float | None = None) -> PruneResult:
    """Plan, print one line per removed (or, verbose, kept/ignored) folder and a total, and remove unless dry_run."""
    plan = plan_pruning(runs_dir, keep_last, keep_days, now)
    now = time.time() if now is None else now
    verb = "would remove" if dry_run else "removed"
    for run in plan.removed:
        if not dry_run:
            remove_run_folder(run)
        print(f"{verb} {run.path} ({_size(run.size_bytes)}, last written {_age(now - run.last_write)} ago)")
    if verbose:
        for run in plan.kept:
            print(f"kept {run.path} ({_size(run.size_bytes)}, last written {_age(now - run.last_write)} ago)")
        for path in plan.ignored:
            print(f"left alone {path}: not a trainflow run folder")
    freed = sum(run.size_bytes for run in plan.removed)
    print(f"{verb} {len(plan.removed)} of {len(plan.removed) + len(plan.kept)} run folders ({_size(freed)}); "
          f"kept the newest {keep_last} and any written in the last {keep_days:g} days")
    return plan


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _age(seconds: float) -> str:
    days = seconds / SECONDS_PER_DAY
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def prune_runs_command(args: argparse.Namespace) -> int:
    prune_runs(args.runs_dir, args.keep_last, args.keep_days, dry_run=args.dry_run, verbose=args.verbose)
    return 0
