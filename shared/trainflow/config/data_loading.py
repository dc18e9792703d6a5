"""The `train.transforms` and `train.data_loading` sections: what the model sees, and how records reach it.

`transforms` changes the numbers (a resumed run must use the same); `data_loading`
changes only speed and memory (a resumed run may change it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from trainflow.config.schema_base import Section

MAX_WORKERS = 256  # DataLoader worker processes; more than any machine has cores for
LOADING_MODES = ("auto", "eager", "lazy", "cached", "memmap", "streaming")


def _worker_count(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_WORKERS):
        return value
    # KFP carries dict parameters as protobuf Structs, whose numbers are all floats: 2 arrives as 2.0.
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_WORKERS:
        return int(value)
    raise ValueError(f"must be a whole number of workers from 0 (load in the training process) to {MAX_WORKERS}, "
                     "or 'auto'")


# DataLoader workers: a count, or "auto" (trainflow.data.loading.loader_factory.resolve_num_workers).
WorkerCount = Annotated[int | Literal["auto"], PlainValidator(_worker_count)]


class AugmentationStep(Section):
    name: str = Field(description="An albumentations transform class, e.g. HorizontalFlip, Affine, ColorJitter.")
    params: dict[str, Any] = Field({}, description="Its keyword arguments, e.g. {p: 0.5}.")


class TransformsConfig(Section):
    """Images (and segmentation masks with them) before they reach the model.

    Every split is resized to `resize` (deterministic); only the train split is
    augmented. Normalisation with the train split's mean and std happens inside
    the model, so the exported model takes plain [0, 1] images.
    """

    resize: int | None = Field(None, ge=8, le=4096, description="Square size for every split; default: the cache's resolution.")
    augment: list[AugmentationStep] = Field(
        [], description="Train split only, applied in order. Each record's randomness is seeded from "
                        "(run seed, epoch, record), so a resumed run augments every record exactly as before.")


class DataLoadingConfig(Section):
    mode: Literal["auto", "eager", "lazy", "cached", "memmap", "streaming"] = Field(
        "auto", description="auto: eager when a split fits in eager_max_mb, else memmap (contiguous caches) or cached. "
                            "lazy decodes the ingest PNGs on access; streaming is for evaluation and inference.")
    eager_max_mb: float = Field(2048, gt=0, le=1e9, description="auto: largest split (decoded) held fully in memory.")
    lru_budget_mb: float = Field(512, gt=0, le=1e9, description="cached: decoded records kept per loader process.")
    stream_block_records: int = Field(256, ge=1, le=10_000_000, description="streaming: records read (and shuffled) at a time.")
    prefetch_factor: int = Field(2, ge=1, le=1024, description="Batches each worker prepares ahead.")
    persistent_workers: bool = Field(True, description="Keep workers (and their open files and caches) across epochs.")
    pin_memory: Literal["auto"] | bool = Field("auto", description="auto: on when training on CUDA.")
