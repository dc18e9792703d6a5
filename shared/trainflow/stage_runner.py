"""Run a stage function from a component: a user error becomes one line and exit code 1."""

from __future__ import annotations

import sys
from typing import Any, Callable

from trainflow.errors import UserFacingError


def run_stage(stage: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return stage(**kwargs)
    except UserFacingError as exc:
        print(f"trainflow: {stage.__name__} failed: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
