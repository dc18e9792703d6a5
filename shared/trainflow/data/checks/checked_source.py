"""Every record of the configured source read and checked: what ingest runs before it splits, and check-data alone."""

from __future__ import annotations

from trainflow.config import IngestConfig
from trainflow.data.checks.caption_tokens import caption_token_counter
from trainflow.data.sources.hdf5 import close_hdf5_files
from trainflow.data.sources.read_source import SourceData, read_source


def check_and_read(cfg: IngestConfig, task: str, model_base: str | None = None) -> SourceData:
    """Every record of the configured source checked: what ingest runs before it splits, and check-data alone.

    The task says what a record needs. Captions are counted with the base model's tokenizer when the task
    counts caption tokens and `model_base` points at one on disk, else estimated.
    Raises UserFacingError only for the source as a whole (missing folder, file or column).
    """
    from trainflow.tasks import get_task

    needs = get_task(task).record_needs
    counter = caption_token_counter(model_base, cfg.max_caption_tokens) if needs.counts_caption_tokens else None
    try:
        return read_source(cfg, needs, counter)
    finally:
        close_hdf5_files()
