"""Where a run may write and delete: only inside its state directory (or the artifact folder it was given).

Names from the config are checked when it is loaded (trainflow.config.names), but a folder can
still lead out through a symlink someone placed in the state directory, so every folder a run
writes or deletes by name is resolved and checked here once more, as the last word.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainflow.config.names import SYSTEM_FOLDERS
from trainflow.errors import UserFacingError


def state_directory(path: str | Path) -> Path:
    """The state directory, resolved; UserFacingError when it is / or a system folder (runs delete inside it)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot use the state directory {str(path)[:300]!r}: {exc}") from None
    if str(resolved) in ("/", *SYSTEM_FOLDERS):
        raise UserFacingError(f"the state directory {resolved} is / or a system folder; give a folder of its own "
                              "(default: .trainflow), since runs create and delete folders inside it")
    return resolved


def path_inside(root: str | Path, *parts: str) -> Path:
    """`root/parts...`, resolved (symlinks followed); UserFacingError when that is not inside `root`.

    `root` itself counts as inside. The result may not exist yet.
    """
    try:
        base = Path(root).resolve()
        target = base.joinpath(*parts).resolve()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte
        raise UserFacingError(f"cannot use the path {str(Path(root, *parts))[:300]!r}: {exc}") from None
    if not target.is_relative_to(base):
        raise UserFacingError(f"{'/'.join(parts)[:300]!r} leads out of {base} (to {str(target)[:300]}); a run writes "
                              "only inside its state directory; remove the symlink or rename the run")
    return target


def remove_inside(root: str | Path, target: str | Path) -> bool:
    """Delete the folder `target` (or a symlink there, not what it points at) when it lies inside `root`.

    Returns whether something was deleted. UserFacingError, deleting nothing, when `target` is
    `root` itself or resolves outside it.
    """
    base = Path(root).resolve()
    path = Path(target)
    if path.is_symlink():  # a link is removed as a link: what it points at is not the run's to delete
        if not path.parent.resolve().is_relative_to(base):
            raise UserFacingError(f"{path} is not inside {base}; nothing was deleted")
        path.unlink()
        return True
    if not path.exists():
        return False
    resolved = path.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise UserFacingError(f"refusing to delete {resolved}: only folders inside the state directory {base} are "
                              "deleted; nothing was deleted")
    shutil.rmtree(resolved)
    return True
