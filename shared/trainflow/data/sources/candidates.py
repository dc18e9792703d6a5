"""The one shape every source returns: its records as raw candidates, plus what it knows about them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trainflow.data.checks.quarantine import DataWarning, RejectedRecord
from trainflow.data.checks.record_validation import CandidateRecord


@dataclasses.dataclass
class SourceCandidates:
    """Records as a source declared them (nothing checked yet) and the facts the checks need.

    kind: "image" (every record has an image), "table" (feature rows) or "text" (a text per record, as its caption).
    root: the folder every path a record names must stay inside (None for in-memory or array sources).
    rejected: declarations that are not records at all (a line that is not JSON, say).
    class_names / target_names / feature_names: what the source itself names (None: it does not say).
    labels_are_names: labels hold class names (tables) rather than class indices (folders, arrays).
    warnings: what the source left out without rejecting a record (a key only a few rows hold, say).
    """

    candidates: list[CandidateRecord]
    kind: str
    root: Path | None = None
    rejected: list[RejectedRecord] = dataclasses.field(default_factory=list)
    class_names: list[str] | None = None
    target_names: list[str] | None = None
    feature_names: list[str] | None = None
    labels_are_names: bool = False
    warnings: list[DataWarning] = dataclasses.field(default_factory=list)
