"""The root rule for every file a record names: a relative path that stays inside the dataset root.

A path is refused when it is not a usable string (not text, empty, NUL bytes, undecodable bytes), absolute,
climbs out with `..`, leaves through a symlink, or names no regular file. Each refusal is a RecordRejected
naming the rule, so one bad path costs one record, never the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainflow.data.checks.quarantine import RecordRejected


def _shown(reference: Any) -> str:
    text = repr(reference)
    return text if len(text) <= 120 else text[:117] + "..."


def resolve_inside_root(reference: Any, base_dir: Path, root: Path, what: str) -> Path:
    """The resolved regular file `reference` names, relative to `base_dir`, inside `root` (already resolved).

    Raises RecordRejected (rules invalid_path, absolute_path, path_outside_root, symlink_outside_root,
    missing_file) when it cannot be used.
    """
    if not isinstance(reference, str):
        raise RecordRejected("invalid_path", f"{what} path {_shown(reference)} is not a string ({type(reference).__name__})")
    if not reference.strip():
        raise RecordRejected("invalid_path", f"{what} path is empty")
    if "\x00" in reference:
        raise RecordRejected("invalid_path", f"{what} path {_shown(reference)} holds a NUL byte")
    if "\ufffd" in reference:  # tables are read with undecodable bytes replaced; such a path names no file
        raise RecordRejected("invalid_path", f"{what} path {_shown(reference)} holds bytes that are not UTF-8")
    if os.path.isabs(reference):
        raise RecordRejected("absolute_path", f"{what} path {_shown(reference)} is absolute; write it relative to {base_dir}")
    lexical = Path(os.path.normpath(base_dir / reference))
    if not lexical.is_relative_to(root):
        raise RecordRejected("path_outside_root", f"{what} path {_shown(reference)} climbs out of the dataset root {root} "
                                                  "with '..'; keep every file inside it")
    try:
        resolved = lexical.resolve()
        is_file = resolved.is_file()
    except (OSError, RuntimeError) as exc:  # name too long, symlink loop, ...
        raise RecordRejected("invalid_path", f"{what} path {_shown(reference)} cannot be used ({type(exc).__name__}: {exc})") from None
    if not resolved.is_relative_to(root):
        raise RecordRejected("symlink_outside_root", f"{what} path {_shown(reference)} leaves the dataset root {root} "
                                                     "through a symlink; copy the file inside the root")
    if not is_file:
        raise RecordRejected("missing_file", f"{what} file {_shown(reference)} does not exist (or is not a regular file)")
    return resolved
