"""The `ingest` section: where the data is, which columns mean what, what counts as bad, how to split it."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from pydantic import Field, model_validator

from trainflow.config.names import PathText, check_dataset_location
from trainflow.config.schema_base import Section
from trainflow.config.task_fields import task_field

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
SOURCE_FIELDS = ("dataset_dir", "table", "hdf5", "sklearn_dataset")
KFOLD_KINDS = ("kfold", "stratified_kfold")


class SplitFractions(Section):
    """How records are assigned to train/val/test (and, for k-fold kinds, to folds)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    kind: Literal["auto", "random", "stratified", "group", "hash", "kfold", "stratified_kfold"] = Field(
        "auto", description=(
            "auto: stratified by label when every class has at least 4 records, else random (seeded). "
            "random / stratified: seeded; stratified keeps each class within one record of its share in every split. "
            "group: whole groups (ingest.group_column) go to one split. "
            "hash: a record's split depends only on its id (or content, see hash_key) and `salt`, so records "
            "added later never move an existing record; use it for scheduled retraining on a growing dataset. "
            "kfold / stratified_kfold: hold out `test`, cut the rest into `folds` folds (folds.json in the dataset); "
            "the manifest's train/val is fold 0. With group_column, folds and the test holdout keep groups whole."))
    salt: str = Field("", description="hash: mixed into every record's hash; changing it reshuffles everything once.")
    hash_key: Literal["id", "content"] = Field(
        "id", description="hash: what the split is a function of: the record id, or its content sha256 (survives renames).")
    folds: int | None = Field(None, ge=2, le=100, description="kfold / stratified_kfold: number of folds.")

    @model_validator(mode="after")
    def _consistent(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        if (self.kind in KFOLD_KINDS) != (self.folds is not None):
            raise ValueError(f"folds is set with kind {self.kind}; set folds (2 or more) exactly when kind is kfold or stratified_kfold")
        if self.kind != "hash" and (self.salt or self.hash_key != "id"):
            raise ValueError(f"salt and hash_key apply to kind: hash only, not kind: {self.kind}")
        return self


class BucketConfig(Section):
    """Aspect-ratio buckets (text_to_image): each image is resized to the nearest of a set of sizes of one pixel budget."""

    resolution: int | None = Field(None, ge=8, le=16384, description=(
        "The pixel budget's side: buckets hold about resolution² pixels (default: ingest.resolution)."))
    step: int = Field(64, ge=1, le=16384, description=(
        "Bucket sides are multiples of this; 64 keeps SD/SDXL latents divisible through the UNet."))
    min_aspect_ratio: float = Field(0.5, gt=0, le=100, description="Narrowest bucket, width / height (0.5 = 1:2 portrait).")
    max_aspect_ratio: float = Field(2.0, gt=0, le=100, description="Widest bucket, width / height (2.0 = 2:1 landscape).")


class PriorPreservationData(Section):
    """Class images for prior preservation (DreamBooth): ingested into the train split beside the instance images."""

    dataset_dir: PathText = Field(description="An image folder in the same layout as ingest.dataset_dir (captions per image).")
    max_records: int | None = Field(None, ge=1, le=1_000_000_000, description="Use only this many class images (seeded choice).")

    @model_validator(mode="after")
    def _not_a_system_folder(self) -> "PriorPreservationData":
        check_dataset_location("prior_preservation.dataset_dir", self.dataset_dir, is_folder=True)
        return self


class IngestConfig(Section):
    """Where the dataset is and how to split it. Exactly one source: a folder, a table, an HDF5 file, or a bundled set."""

    dataset_dir: PathText | None = Field(None, description="Image dataset root: an imagefolder with metadata.jsonl, or <split>/images + captions.json.")
    table: PathText | None = Field(None, description=(
        "A table, one row per record: .csv/.tsv, .jsonl or .parquet (or set table_format). With a column named "
        "image_column the records are images (paths relative to the table's folder, which they must stay inside); "
        "otherwise they are feature rows."))
    table_format: Literal["csv", "jsonl", "parquet"] | None = Field(None, description="Format of `table` when its suffix does not say.")
    hdf5: PathText | None = Field(None, description=(
        "An HDF5 file of equal-length datasets; the *_column fields name them: image_column (N,H,W[,C]) uint8 "
        "or feature_columns ((N,F) or several (N,)), label_column (N,), target_columns, mask_column (N,H,W), "
        "caption_column, id_column, group_column."))
    sklearn_dataset: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] | None = Field(
        None, description="One of scikit-learn's bundled datasets (no download): digits as 8x8 images, the others as tables.")
    image_column: str = "file_name"
    caption_column: str = "text"
    # Class label per record: classification targets, and prompt accuracy for text-to-image. Folders and HDF5
    # hold class indices (or names listed in class_names); in tables the values are class names.
    label_column: str | None = None
    text_column: str | None = task_field(None, description=(
        "text_classification: the table column holding each record's text (the label is ingest.label_column)."),
        elsewhere="a table of texts trains with task: text_classification, not {task}")
    # Numeric regression targets (tables, imagefolders, HDF5).
    target_columns: list[str] | None = None
    # Table features; default: every column (other than those named here) whose values are mostly numbers.
    feature_columns: list[str] | None = None
    # Segmentation: column holding the mask PNG path (class ids as pixel values).
    mask_column: str | None = None
    id_column: str | None = Field(None, description="Column holding a stable record id (default: the image path, or table/file row).")
    group_column: str | None = Field(None, description="Column naming each record's group (patient, scene, ...); split.kind: group keeps groups whole.")
    class_names: list[str] | None = Field(None, description="Names of the classes 0..K-1 (default: from the data).")
    resolution: int = Field(512, ge=8, le=16384, description="Images are resized (shorter side) and center-cropped to this size.")
    min_image_size: int = Field(8, ge=1, le=16384, description="Images whose shorter side is below this many pixels are rejected.")
    max_image_pixels: int = Field(89_478_485, ge=64, le=2**34, description=(
        "Images with more pixels than this are rejected before they are decoded (decompression-bomb guard; "
        "the default is Pillow's own)."))
    max_caption_tokens: int = Field(77, ge=1, le=100_000, description=(
        "Caption length the text encoder keeps when no tokenizer is available to count with (captions are then "
        "counted in whitespace-separated words); longer captions are a warning, not a rejection."))
    max_bad_fraction: float = Field(0.2, ge=0, le=1, description=(
        "Fail ingest when more than this share of records is rejected (e.g. a half-mounted volume), "
        "after writing the quarantine report."))
    split: SplitFractions = SplitFractions()
    max_records: int | None = Field(None, ge=3, le=1_000_000_000, description="Use only this many valid records (quick runs and tests).")
    labelled_fraction: float | None = task_field(None, gt=0, le=1, description=(
        "semi_supervised: the share of train records that keep their label, chosen by the seeded split "
        "(stratified by class); the others are written to the manifest without it (`unlabelled: true`). "
        "Val and test keep every label."),
        elsewhere="task {task} trains on labelled records only; remove it (task semi_supervised learns from the "
                  "unlabelled ones)")
    buckets: BucketConfig | None = Field(None, description=(
        "text_to_image: aspect-ratio buckets instead of one square resolution; every image is resized to cover "
        "the bucket nearest its aspect ratio and the small excess centre-cropped (its original size and crop are "
        "recorded); every training batch comes from one bucket. Off (null): resize and centre-crop to "
        "resolution × resolution."))
    alpha_mask: bool = Field(False, description=(
        "text_to_image: use each image's alpha channel as its loss mask (0 = not trained on); images without "
        "alpha train everywhere."))
    prior_preservation: PriorPreservationData | None = Field(None, description=(
        "text_to_image: class images (DreamBooth prior preservation) added to the train split; their share of each "
        "epoch and loss weight are train.diffusion.prior_preservation."))

    @model_validator(mode="after")
    def _one_source(self) -> "IngestConfig":
        given = [name for name in SOURCE_FIELDS if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of dataset_dir (image folder), table (CSV/JSONL/Parquet file), hdf5 (HDF5 file) or "
                f"sklearn_dataset (one of {', '.join(SKLEARN_DATASETS)}); got {', '.join(given) or 'none'}"
            )
        for field in ("dataset_dir", "table", "hdf5"):
            if getattr(self, field):
                check_dataset_location(field, getattr(self, field), is_folder=field == "dataset_dir")
        if self.table_format and not self.table:
            raise ValueError("table_format applies to ingest.table only; remove it or set table")
        if self.table and not self.table_format and PurePath(self.table).suffix.lower() not in TABLE_FORMATS:
            raise ValueError(f"table: cannot tell the format of {self.table!r} from its suffix; name it "
                             ".csv, .jsonl or .parquet, or set ingest.table_format")
        if self.text_column and not self.table:
            raise ValueError("text_column applies to ingest.table only (a CSV/JSONL/Parquet table of texts); set table")
        if self.split.kind == "group" and not self.group_column:
            raise ValueError("split.kind: group needs ingest.group_column (the column naming each record's group)")
        if self.buckets is not None and not self.bucket_sizes:
            b = self.buckets
            raise ValueError(f"buckets: no bucket of about {b.resolution or self.resolution}² pixels has sides that "
                             f"are multiples of step {b.step} and a width/height between {b.min_aspect_ratio:g} and "
                             f"{b.max_aspect_ratio:g}, so no image would have a bucket; lower buckets.step, raise "
                             "buckets.resolution or widen the aspect ratio range")
        return self

    @property
    def bucket_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every bucket; empty when buckets are off."""
        if self.buckets is None:
            return []
        from trainflow.diffusion.buckets import bucket_sizes

        b = self.buckets
        return bucket_sizes(b.resolution or self.resolution, b.step, b.min_aspect_ratio, b.max_aspect_ratio)

    @property
    def resolved_table_format(self) -> str:
        """csv | jsonl | parquet, from table_format or the table's suffix."""
        return self.table_format or TABLE_FORMATS[PurePath(self.table or "").suffix.lower()]

    @property
    def source_description(self) -> str:
        if self.sklearn_dataset:
            return f"scikit-learn dataset '{self.sklearn_dataset}'"
        return str(self.dataset_dir or self.table or self.hdf5)
