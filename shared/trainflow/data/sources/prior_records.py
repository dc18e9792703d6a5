"""Class images for prior preservation (DreamBooth): a second image folder, checked like the first.

They join the train split only (validation and test measure the instance data), with ids prefixed `prior/` so
they can never collide with an instance record's, and `prior: true` in the manifest. How often they are drawn
and how much their loss weighs is training's business (train.diffusion.prior_preservation).
"""

from __future__ import annotations

import dataclasses
import random

from trainflow.config import IngestConfig
from trainflow.data.checks.checked_source import check_and_read
from trainflow.data.checks.quarantine import RejectedRecord, bad_fraction_problem, printable
from trainflow.data.sources.read_source import IngestRecord
from trainflow.errors import UserFacingError

PRIOR_PREFIX = "prior/"


@dataclasses.dataclass
class PriorRecords:
    records: list[IngestRecord] = dataclasses.field(default_factory=list)
    rejected: list[RejectedRecord] = dataclasses.field(default_factory=list)
    checked: int = 0


def read_prior_records(cfg: IngestConfig, task: str, model_base: str | None, seed: int) -> PriorRecords:
    """The class images of ingest.prior_preservation, checked; UserFacingError when too many are unusable."""
    prior = cfg.prior_preservation
    if prior is None:
        return PriorRecords()
    folder = cfg.model_copy(update={
        "dataset_dir": prior.dataset_dir, "table": None, "hdf5": None, "sklearn_dataset": None, "label_column": None,
        "group_column": None, "target_columns": None, "prior_preservation": None, "max_records": None,
    })
    source = check_and_read(folder, task, model_base)
    where = "ingest.prior_preservation.dataset_dir"
    if problem := bad_fraction_problem(len(source.records), len(source.rejected), cfg.max_bad_fraction):
        raise UserFacingError(f"{where}: {problem} of the class images in {printable(prior.dataset_dir)}; fix them or "
                              "point it at another folder")
    records = source.records
    if prior.max_records is not None and len(records) > prior.max_records:
        records = sorted(random.Random(seed).sample(records, prior.max_records), key=lambda r: r.record_id)
    if not records:
        raise UserFacingError(f"{where}: {printable(prior.dataset_dir)} holds no usable class images")
    renamed = [dataclasses.replace(r, record_id=PRIOR_PREFIX + r.record_id) for r in records]
    rejected = [dataclasses.replace(r, source=f"class images: {r.source}") for r in source.rejected]
    return PriorRecords(renamed, rejected, len(source.records) + len(source.rejected))


def prior_markdown(prior: PriorRecords, cfg: IngestConfig) -> list[str]:
    assert cfg.prior_preservation is not None
    return [f"Class images (prior preservation) from `{printable(cfg.prior_preservation.dataset_dir)}`: checked "
            f"{prior.checked}, kept {len(prior.records)} in the train split, rejected {len(prior.rejected)} (listed "
            "below with the instance data's)  ", ""]
