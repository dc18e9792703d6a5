"""Where a cache is built: keyed by its inputs, locked while written, resumable shard by shard, reusable.

    key = sha256 of {format version, cache kind, the dataset manifest's sha256,
                     dataset.json's sha256, the settings that change the files}

With `cache.cache_root` the folder is <cache_root>/<kind>-<key prefix>/: a later
run with the same key finds it complete and reuses it, and a run killed mid-build
leaves its finished shards there for the retry. Without it the folder is a hidden
sibling of the stage's output, so a retry into the same output path still resumes.

    <folder>/build_progress.json   {"key", "shards": {name: facts}}, rewritten atomically after each shard
    <folder>/.build.lock           held (flock) while a process builds, so two runs never write one cache
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainflow.atomic_files import atomic_write_json
from trainflow.data.manifest import DATASET_INFO, manifest_sha256
from trainflow.errors import UserFacingError

FORMAT_VERSION = 2  # bump when the files' layout changes: older keyed caches are then rebuilt, never misread
PROGRESS_FILE = "build_progress.json"
LOCK_FILE = ".build.lock"


def cache_key(dataset_dir: str | Path, kind: str, settings: dict[str, Any]) -> str:
    """The hex sha256 that names a cache; equal keys mean equal caches."""
    info = Path(dataset_dir) / DATASET_INFO
    payload = {
        "format_version": FORMAT_VERSION, "kind": kind, "manifest_sha256": manifest_sha256(dataset_dir),
        # dataset.json holds the resolution and class names, which the manifest's records do not.
        "dataset_info_sha256": hashlib.sha256(info.read_bytes()).hexdigest() if info.is_file() else None,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CacheBuildFolder:
    """A locked build folder for one key. Use as a context manager; `folder` is where files go."""

    def __init__(self, output_dir: str | Path, key: str, kind: str, cache_root: str | None) -> None:
        self.key, self.output_dir = key, Path(output_dir)
        self.shared = cache_root is not None
        self.folder = (Path(cache_root) / f"{kind}-{key[:24]}" if cache_root
                       else self.output_dir.parent / f".{self.output_dir.name}.build-{key[:16]}")
        self._lock = None

    def __enter__(self) -> "CacheBuildFolder":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.folder / LOCK_FILE, "w")  # noqa: SIM115 - held for the whole build
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # another run building this key: wait, then reuse its result
        except OSError as error:
            raise UserFacingError(f"cannot build the cache in {self.folder} ({error.strerror or error}); cache.cache_root "
                                  "must be a writable folder on a filesystem with file locks") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def completed_shards(self) -> dict[str, Any]:
        """Facts of the shards a previous attempt finished (their files exist); stale temporaries are removed."""
        for leftover in self.folder.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        path = self.folder / PROGRESS_FILE
        if not path.is_file():
            return {}
        progress = json.loads(path.read_text(encoding="utf-8"))
        if progress.get("key") != self.key:
            return {}
        return {name: facts for name, facts in progress["shards"].items() if (self.folder / name).is_file()}

    def mark_complete(self, completed: dict[str, Any], name: str, facts: dict[str, Any]) -> None:
        completed[name] = facts
        atomic_write_json(self.folder / PROGRESS_FILE, {"key": self.key, "shards": completed})

    def move_to_output(self) -> None:
        """Without a cache root: the finished folder becomes the output folder (the old one is replaced whole)."""
        (self.folder / PROGRESS_FILE).unlink(missing_ok=True)
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        if self.output_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.", suffix=".old", dir=self.output_dir.parent))
            os.replace(self.output_dir, retired / "previous")
            os.replace(self.folder, self.output_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(self.folder, self.output_dir)
