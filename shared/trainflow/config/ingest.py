"""The `ingest` section: where the data is, which columns mean what, how to split it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainflow.config.schema_base import Section

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")


class SplitFractions(Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class IngestConfig(Section):
    """Where the dataset is and how to split it. Exactly one source: a folder, a table, or a bundled set."""

    dataset_dir: str | None = Field(None, description="Image dataset root: an imagefolder with metadata.jsonl, or <split>/images + captions.json.")
    table: str | None = Field(None, description="A CSV file: one row per record, feature/target/label columns.")
    sklearn_dataset: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] | None = Field(
        None, description="One of scikit-learn's bundled datasets (no download): digits as 8x8 images, the others as tables.")
    image_column: str = "file_name"
    caption_column: str = "text"
    # Integer class label per record: classification targets, and prompt accuracy for text-to-image.
    label_column: str | None = None
    # Numeric regression targets (tables and imagefolders).
    target_columns: list[str] | None = None
    # Table features; default: every numeric column that is not a label or target.
    feature_columns: list[str] | None = None
    # Segmentation: column holding the mask PNG path (class ids as pixel values).
    mask_column: str | None = None
    class_names: list[str] | None = Field(None, description="Names of the classes 0..K-1 (default: from the data).")
    resolution: int = Field(512, ge=8, description="Images are resized (shorter side) and center-cropped to this size.")
    split: SplitFractions = SplitFractions()
    max_records: int | None = Field(None, ge=3, description="Use only this many valid records (quick runs and tests).")

    @model_validator(mode="after")
    def _one_source(self) -> "IngestConfig":
        given = [name for name in ("dataset_dir", "table", "sklearn_dataset") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of dataset_dir (image folder), table (CSV file) or sklearn_dataset "
                f"(one of {', '.join(SKLEARN_DATASETS)}); got {', '.join(given) or 'none'}"
            )
        return self

    @property
    def source_description(self) -> str:
        if self.sklearn_dataset:
            return f"scikit-learn dataset '{self.sklearn_dataset}'"
        return str(self.dataset_dir or self.table)
