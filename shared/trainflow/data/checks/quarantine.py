"""Rejected records and the quarantine report: every record is kept or named here with a reason.

    rejected.jsonl   one JSON object per rejected record: ref (how the data refers to it), source (where it
                     was declared, e.g. metadata.jsonl:12), reason (one sentence), rule (the check that failed)

The Markdown report groups the reasons (top rules with counts) and lists the records. `bad_fraction_problem`
is the one place that decides whether too much was rejected to train on what is left.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Iterable

REPORT_ROWS = 1000  # the Markdown lists this many rejected records; rejected.jsonl has them all


@dataclasses.dataclass(frozen=True)
class RejectedRecord:
    source: str  # where the record was declared, e.g. "metadata.jsonl:12" or "data.csv:7"
    ref: str  # how the data refers to the record (image path as written, row, id)
    reason: str  # one sentence: what is wrong
    rule: str = "unexpected_error"  # the check that failed, for grouping

    def __post_init__(self) -> None:
        for field in ("source", "ref", "reason"):  # reports and logs must be writable whatever the data held
            object.__setattr__(self, field, printable(getattr(self, field)))


def printable(text: str) -> str:
    """`text` with lone surrogates (from JSON escapes or undecodable file names) spelled as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RecordRejected(Exception):
    """Raised by a per-record check; the record becomes a RejectedRecord with this rule and reason."""

    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class DataWarning:
    """Something kept records have that the user should know, e.g. captions the text encoder truncates."""

    rule: str
    count: int
    message: str
    examples: tuple[str, ...] = ()


def rejected_line(record: RejectedRecord) -> dict[str, str]:
    return {"ref": record.ref, "source": record.source, "reason": record.reason, "rule": record.rule}


def rejected_jsonl(rejected: Iterable[RejectedRecord]) -> str:
    return "".join(json.dumps(rejected_line(r)) + "\n" for r in rejected)


def top_reasons(rejected: list[RejectedRecord], limit: int = 10) -> list[tuple[str, int, str]]:
    """(rule, count, an example reason) for the most frequent rules, most frequent first, then by rule name."""
    counts = Counter(r.rule for r in rejected)
    example = {}
    for record in rejected:
        example.setdefault(record.rule, record.reason)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(rule, count, example[rule]) for rule, count in ordered[:limit]]


def bad_fraction(num_kept: int, num_rejected: int) -> float:
    total = num_kept + num_rejected
    return num_rejected / total if total else 0.0


def bad_fraction_problem(num_kept: int, num_rejected: int, max_bad_fraction: float) -> str | None:
    """A sentence saying how much was rejected when it is above `max_bad_fraction`, else None."""
    fraction = bad_fraction(num_kept, num_rejected)
    if fraction <= max_bad_fraction:
        return None
    return (f"{fraction:.1%} of the records ({num_rejected} of {num_kept + num_rejected}) were rejected, above "
            f"ingest.max_bad_fraction {max_bad_fraction:g}")


def _cell(text: str) -> str:
    """Markdown table cell: no line breaks, no pipes, not endless."""
    flat = printable(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'").replace("\r", " ").replace("\n", " ")
    return flat if len(flat) <= 300 else flat[:297] + "..."


def quarantine_markdown(rejected: list[RejectedRecord], warnings: list[DataWarning]) -> list[str]:
    """Markdown lines: warnings, rejected reasons grouped by rule, then the rejected records."""
    lines: list[str] = []
    for warning in warnings:
        lines += [f"**Warning ({warning.rule})**: {warning.message}", ""]
        if warning.examples:
            lines += ["Examples: " + ", ".join(f"`{_cell(e)}`" for e in warning.examples), ""]
    if not rejected:
        return lines + ["No records were rejected."]
    lines += [f"## Rejected records ({len(rejected)})", "", "| rule | records | example |", "|---|---|---|"]
    lines += [f"| {rule} | {count} | {_cell(example)} |" for rule, count, example in top_reasons(rejected, limit=50)]
    lines += ["", "| record | declared in | reason |", "|---|---|---|"]
    lines += [f"| `{_cell(r.ref)}` | `{_cell(r.source)}` | {_cell(r.reason)} |" for r in rejected[:REPORT_ROWS]]
    if len(rejected) > REPORT_ROWS:
        lines += ["", f"... and {len(rejected) - REPORT_ROWS} more; rejected.jsonl in the dataset artifact lists them all."]
    return lines
