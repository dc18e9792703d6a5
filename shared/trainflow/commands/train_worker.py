"""`trainflow train-worker --request R`: what each process of a PyTorchJob/TrainJob runs (alone or under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainflow.errors import UserFacingError


def train_worker_command(args: argparse.Namespace) -> int:
    import json

    from trainflow.config import parse_section
    from trainflow.training.distributed import destroy_process_group
    from trainflow.stages.train import TrainRequest, train_from_request

    path = Path(args.request)
    if not path.is_file():
        raise UserFacingError(f"train request {path} does not exist; the launcher writes it on the shared workspace")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserFacingError(f"train request {path} is not valid JSON ({exc})") from None
    try:
        train_from_request(parse_section(TrainRequest, payload, str(path)))
    finally:
        destroy_process_group()
    return 0
