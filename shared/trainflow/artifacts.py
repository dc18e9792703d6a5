"""What a stage function needs from a KFP artifact, without importing KFP.

Stage functions take any object with a `.path` (where to write or read) and a
`.metadata` dict (small JSON-able facts shown in the Kubeflow UI). KFP's
`Dataset`, `Model`, `Metrics`, `HTML` and `Markdown` artifacts all fit, and so
does `LocalArtifact`, which tests and direct Python callers use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator, Protocol


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


@dataclasses.dataclass
class LocalArtifact:
    path: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def timed_stage(name: str, *artifacts: ArtifactLike) -> Iterator[None]:
    """Record the stage name and its wall time in each output artifact's metadata.

    The local run's summary reads these back; on a cluster they show in the UI.
    """
    started = time.time()
    yield
    elapsed = round(time.time() - started, 2)
    for artifact in artifacts:
        artifact.metadata["stage"] = name
        artifact.metadata["stage_seconds"] = elapsed
