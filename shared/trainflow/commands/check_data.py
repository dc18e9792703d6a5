"""`trainflow check-data`: ingest's checks alone, before any GPU time is spent; nothing is snapshotted.

    {"kept": [record ids], "rejected": [{"ref", "source", "reason"}], "bad_fraction": f, "max_bad_fraction": f,
     "warnings": [message]}
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from trainflow.atomic_files import atomic_write_json
from trainflow.config import RunConfig
from trainflow.data.checks.checked_source import check_and_read
from trainflow.data.checks.quarantine import bad_fraction, bad_fraction_problem, printable, top_reasons
from trainflow.data.sources.read_source import SourceData


@dataclasses.dataclass(frozen=True)
class DataCheck:
    source: SourceData
    max_bad_fraction: float

    @property
    def bad_fraction(self) -> float:
        return bad_fraction(len(self.source.records), len(self.source.rejected))

    @property
    def problem(self) -> str | None:
        """A sentence when more than max_bad_fraction was rejected, else None."""
        return bad_fraction_problem(len(self.source.records), len(self.source.rejected), self.max_bad_fraction)


def check_data(config: RunConfig) -> DataCheck:
    """Check the run's ingest source for its task (tokenizer from model.base when on disk)."""
    return DataCheck(check_and_read(config.ingest, config.task, config.model.base), config.ingest.max_bad_fraction)


def check_lines(check: DataCheck, top: int = 10) -> list[str]:
    """What check-data prints: counts, the top reasons with counts and an example, warnings, the verdict."""
    kept, rejected = len(check.source.records), len(check.source.rejected)
    lines = [f"check-data: kept {kept}, rejected {rejected} of {kept + rejected} records "
             f"({check.bad_fraction:.1%}; limit {check.max_bad_fraction:.0%})"]
    for rule, count, example in top_reasons(check.source.rejected, top):
        lines.append(f"  {count:6d}  {rule}  e.g. {example}")
    lines += [f"check-data: warning: {w.message}" for w in check.source.warnings]
    lines.append(f"check-data: FAIL: {check.problem}" if check.problem else "check-data: OK")
    return [printable(line) for line in lines]


def write_check_json(check: DataCheck, path: str | Path) -> None:
    """The kept ids and the rejected records, written atomically."""
    atomic_write_json(path, {
        "kept": [r.record_id for r in check.source.records],
        "rejected": [{"ref": r.ref, "source": r.source, "reason": r.reason} for r in check.source.rejected],
        "bad_fraction": round(check.bad_fraction, 6),
        "max_bad_fraction": check.max_bad_fraction,
        "warnings": [w.message for w in check.source.warnings],
    })


def check_data_command(args: argparse.Namespace) -> int:
    from trainflow.config import load_config

    check = check_data(load_config(args.config, check_local_paths=False))  # a missing source is reported by the check
    print("\n".join(check_lines(check)))
    if args.json:
        write_check_json(check, args.json)
    return 1 if check.problem else 0
