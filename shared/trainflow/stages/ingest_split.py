"""Stage 1: read and check every record of the configured source, quarantine the bad ones, split, snapshot."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_directory, atomic_write_json, atomic_write_text
from trainflow.config import IngestConfig, check_task_fit, parse_section
from trainflow.data.checks.checked_source import check_and_read
from trainflow.data.sources.hdf5 import close_hdf5_files
from trainflow.data.kfold_split import FoldPlan, assign_folds
from trainflow.data.manifest import DATASET_INFO, FOLDS_FILE, REJECTED_FILE, SPLITS
from trainflow.data.checks.image_decoding import ImageLimits
from trainflow.data.checks.quarantine import (
    RecordRejected, bad_fraction, bad_fraction_problem, printable, quarantine_markdown, rejected_jsonl, top_reasons,
)
from trainflow.data.sources.prior_records import PriorRecords, prior_markdown, read_prior_records
from trainflow.data.checks.record_validation import record_alpha, record_image, record_mask
from trainflow.data.snapshot_images import SnapshotSizes, beyond_aspect_range, fit_image, fit_mask, resize_to_cover
from trainflow.data.sources.read_source import IngestRecord, SourceData, image_limits
from trainflow.data.split import assign_splits, effective_kind
from trainflow.errors import UserFacingError
from trainflow.tasks import get_task
from trainflow.tasks.definition import HiddenLabels


def resize_center_crop(image: Image.Image, resolution: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop the center square."""
    return resize_to_cover(image, resolution, resolution, resample)[0]


def content_hash(records: list[IngestRecord]) -> str:
    """Hash of what the data says (content, caption, label, targets), independent of the order of records."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.record_id):
        line = f"{record.record_id}\t{record.sha256}\t{record.caption}\t{record.label}\t{record.targets}\n"
        digest.update(line.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _split(records: list[IngestRecord], cfg: IngestConfig, seed: int) -> tuple[dict[str, str], FoldPlan | None]:
    if cfg.split.kind in ("kfold", "stratified_kfold"):
        plan = assign_folds(records, cfg.split, seed, grouped=cfg.group_column is not None)
        return plan.manifest_assignment(), plan
    return assign_splits(records, cfg.split, seed), None


def ingest_split(config: dict[str, Any], seed: int, dataset: ArtifactLike, report: ArtifactLike,
                 task: str, model_base: str | None = None) -> dict[str, Any]:
    """Check every record of the configured source, split it, and write the Dataset artifact.

    Inputs: the `ingest` config section, the run seed, the task, and optionally the base model (`model.base`)
    whose tokenizer counts caption tokens.
    Outputs: `dataset` (folder, see trainflow.data.manifest) with counts and `content_sha256` in its metadata;
    `report` (Markdown): warnings, rejected records grouped by reason, and the records themselves.
    Fails (UserFacingError, after writing the report and rejected.jsonl) when the source is missing, more than
    ingest.max_bad_fraction of the records are rejected, or the usable records cannot fill every split.
    """
    cfg: IngestConfig = parse_section(IngestConfig, config, "the ingest section")
    check_task_fit(task, cfg, None, None)
    try:
        with timed_stage("ingest_split", dataset, report):
            return _ingest(cfg, seed, dataset, report, task, model_base)
    finally:
        close_hdf5_files()


def _usable_split(cfg: IngestConfig, seed: int, source: SourceData, report: ArtifactLike
                  ) -> tuple[list[IngestRecord], dict[str, str], FoldPlan | None]:
    """(records to keep, their splits, the k-fold plan or None); UserFacingError when ingest must stop."""
    if problem := bad_fraction_problem(len(source.records), len(source.rejected), cfg.max_bad_fraction):
        raise UserFacingError(f"{problem}, so ingest stops rather than train on what is left (a half-mounted volume "
                              f"looks like this). The quarantine report is at {report.path}; top reasons: "
                              f"{_reasons_line(source)}")
    valid = source.records
    if cfg.max_records is not None and len(valid) > cfg.max_records:
        valid = sorted(random.Random(seed).sample(valid, cfg.max_records), key=lambda r: r.record_id)
    if len(valid) < 3:
        raise UserFacingError(f"only {len(valid)} usable records in {cfg.source_description} (need at least 3); "
                              f"see the quarantine report at {report.path}; top reasons: {_reasons_line(source)}")
    assignment, plan = _split(valid, cfg, seed)
    return valid, assignment, plan


def _ingest(cfg: IngestConfig, seed: int, dataset: ArtifactLike, report: ArtifactLike, task: str,
            model_base: str | None) -> dict[str, Any]:
    source = check_and_read(cfg, task, model_base)
    rejected = source.rejected
    report.metadata["num_rejected"] = len(rejected)
    try:
        valid, assignment, plan = _usable_split(cfg, seed, source, report)
    except UserFacingError as failure:
        atomic_write_text(report.path, _report_markdown(None, source, cfg, failure=str(failure)))
        with atomic_directory(dataset.path) as staging:  # only the rejections: no manifest, nothing to train on
            (staging / REJECTED_FILE).write_text(rejected_jsonl(rejected), encoding="utf-8")
        raise
    prior = read_prior_records(cfg, task, model_base, seed)
    rejected = rejected + prior.rejected
    hidden = get_task(task).hidden_train_labels(valid, assignment, cfg, seed)  # a task that learns without labels
    unlabelled = hidden.ids if hidden is not None else frozenset()
    counters: Counter[str] = Counter()
    sizes = SnapshotSizes()
    limits = image_limits(cfg)
    planned = [(record, assignment[record.record_id], False) for record in valid]
    planned += [(record, "train", True) for record in prior.records]
    with atomic_directory(dataset.path) as staging:
        lines = [json.dumps(_snapshot(record, split, is_prior, counters, sizes, staging, cfg, source.kind, task, limits,
                                      record.record_id in unlabelled))
                 for record, split, is_prior in tqdm(planned, desc="ingest: snapshotting records", unit="rec",
                                                     mininterval=2.0, disable=None)]
        (staging / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (staging / REJECTED_FILE).write_text(rejected_jsonl(rejected), encoding="utf-8")
        atomic_write_json(staging / DATASET_INFO, _dataset_info(source, cfg, task))
        if plan is not None:
            atomic_write_json(staging / FOLDS_FILE, plan.as_json(cfg.split.kind, seed, cfg.group_column is not None))
    summary = {
        "num_records": len(valid),
        "num_rejected": len(rejected),
        "bad_fraction": round(bad_fraction(len(source.records), len(source.rejected)), 6),
        **{f"num_{split}": counters[split] for split in SPLITS},
        **({"num_prior": len(prior.records)} if cfg.prior_preservation is not None else {}),
        **({"num_unlabelled_train": len(unlabelled)} if hidden is not None else {}),
        **({"num_buckets": len(sizes.per_bucket)} if cfg.buckets is not None else {}),
        "content_sha256": content_hash(valid + prior.records),
        "kind": source.kind,
        "resolution": cfg.resolution if source.kind == "image" else 0,
        "has_labels": all(r.label is not None for r in valid),
        "source": cfg.source_description,
        "split_kind": effective_kind(valid, cfg.split),
        "num_warnings": sum(w.count for w in source.warnings),
        **({"num_folds": len(plan.folds)} if plan is not None else {}),
    }
    dataset.metadata.update(summary)
    atomic_write_text(report.path, _report_markdown(summary, source, cfg, sizes=sizes, prior=prior, hidden=hidden))
    if rejected:
        print(f"ingest: rejected {len(rejected)} records ({_reasons_line(source)}); see the ingest report")
    for warning in source.warnings:
        print(printable(f"ingest: warning: {warning.message}"))
    return summary


def _reasons_line(source: SourceData) -> str:
    return printable("; ".join(f"{rule} x{count} (e.g. {example})" for rule, count, example in top_reasons(source.rejected, 3))
                     or "none")


def _snapshot(record: IngestRecord, split: str, is_prior: bool, counters: Counter, sizes: SnapshotSizes, staging: Path,
              cfg: IngestConfig, kind: str, task: str, limits: ImageLimits, hide_label: bool = False) -> dict:
    """The record's manifest line, with its image (and mask) written; a file that changed since its check stops ingest.

    hide_label: leave the label out and mark the line `unlabelled: true` (the task's hidden_train_labels)."""
    try:
        line = _manifest_line(record, split, is_prior, counters, sizes, staging, cfg, kind, task, limits)
    except (RecordRejected, OSError) as exc:
        raise UserFacingError(f"record {printable(record.record_id)!r} changed or vanished while ingest was running "
                              f"({printable(str(exc))}); run ingest again once the data is stable") from None
    if hide_label:
        line.pop("label", None)
        line["unlabelled"] = True
    return line


def _manifest_line(record: IngestRecord, split: str, is_prior: bool, counters: Counter, sizes: SnapshotSizes,
                   staging: Path, cfg: IngestConfig, kind: str, task: str, limits: ImageLimits) -> dict:
    folder = "prior" if is_prior else split  # class images are numbered apart, so the splits' numbering is unchanged
    number = counters[folder]
    counters[folder] += 1
    line: dict[str, Any] = {"id": record.record_id, "split": split, "sha256": record.sha256}
    if kind == "image":
        relative = f"images/{folder}/{number:07d}.png"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        original = record_image(record, limits)
        fitted = fit_image(original, cfg)
        fitted.image.save(staging / relative)
        sizes.add(split, fitted.image.size, beyond_aspect_range(original, cfg))
        line["image"] = relative
        if fitted.changed:
            line["original_size"], line["crop_top_left"] = list(fitted.original_size), list(fitted.crop_top_left)
        mask = record_mask(record, limits)
        if mask is None and cfg.alpha_mask:
            mask = record_alpha(record, limits)
        if mask is not None:
            mask_relative = f"masks/{folder}/{number:07d}.png"
            (staging / mask_relative).parent.mkdir(parents=True, exist_ok=True)
            # Class-id masks (the task's classes are mask values) resize without blending ids; loss weights blend.
            class_ids = get_task(task).record_needs.classes_of == "masks"
            fit_mask(mask, fitted.image.size, weights=not class_ids).save(staging / mask_relative)
            line["mask"] = mask_relative
    for key in ("caption", "label", "targets", "features", "group"):
        value = getattr(record, key)
        if value is not None:
            line[key] = list(value) if isinstance(value, tuple) else value
    if is_prior:
        line["prior"] = True
    return line


def _dataset_info(source: SourceData, cfg: IngestConfig, task: str) -> dict[str, Any]:
    info = {"task": task, "kind": source.kind, "class_names": source.class_names, "target_names": source.target_names,
            "feature_names": source.feature_names, "resolution": cfg.resolution if source.kind == "image" else None,
            "split": cfg.split.model_dump(mode="json")}
    if cfg.buckets is not None:  # (width, height) of every bucket the settings allow
        info["buckets"] = [list(size) for size in cfg.bucket_sizes]
    return info


def _report_markdown(summary: dict[str, Any] | None, source: SourceData, cfg: IngestConfig, failure: str | None = None,
                     sizes: SnapshotSizes | None = None, prior: PriorRecords | None = None,
                     hidden: HiddenLabels | None = None) -> str:
    lines = ["# Dataset ingest", "", f"Source: `{printable(cfg.source_description)}`  "]
    total = len(source.records) + len(source.rejected)
    lines.append(f"Checked {total} records: kept {len(source.records)}, rejected {len(source.rejected)} "
                 f"({bad_fraction(len(source.records), len(source.rejected)):.1%}; limit ingest.max_bad_fraction "
                 f"{cfg.max_bad_fraction:g})  ")
    if failure is not None:
        lines += ["", f"**Ingest failed**: {printable(failure)}", ""]
    else:
        assert summary is not None
        lines += [f"Split ({summary['split_kind']}): train {summary['num_train']}, val {summary['num_val']}, "
                  f"test {summary['num_test']} of {summary['num_records']} records; content sha256 "
                  f"`{summary['content_sha256'][:16]}…`", ""]
        if hidden is not None:
            lines += [f"Labels kept on {summary['num_train'] - summary['num_unlabelled_train']} of {summary['num_train']} "
                      f"train records ({hidden.how}); the others are in the manifest without a label", ""]
        if prior is not None and cfg.prior_preservation is not None:
            lines += prior_markdown(prior, cfg)
        if sizes is not None and cfg.buckets is not None:
            lines += sizes.markdown(cfg)
    lines += quarantine_markdown(source.rejected + (prior.rejected if prior else []), source.warnings)
    return "\n".join(lines) + "\n"
