"""Stage 1: read and check every record of the configured source, split, and snapshot it."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_directory, atomic_write_json, atomic_write_text
from trainflow.config import IngestConfig, check_task_fit, parse_section
from trainflow.data.manifest import DATASET_INFO, SPLITS
from trainflow.data.sources import IngestRecord, SourceData, read_source
from trainflow.data.split import assign_splits
from trainflow.errors import ConfigError, UserFacingError


def resize_center_crop(image: Image.Image, resolution: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop the center square."""
    scale = resolution / min(image.size)
    resized = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))), resample)
    left = (resized.width - resolution) // 2
    top = (resized.height - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def content_hash(records: list[IngestRecord]) -> str:
    """Hash of what the data says (content, caption, label, targets), independent of the order of records."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.record_id):
        digest.update(f"{record.record_id}\t{record.sha256}\t{record.caption}\t{record.label}\t{record.targets}\n".encode())
    return digest.hexdigest()


def _snapshot_image(record: IngestRecord, resolution: int) -> Image.Image:
    if record.image_array is not None:
        image = Image.fromarray(record.image_array)
    else:
        with Image.open(record.image_path) as opened:
            image = ImageOps.exif_transpose(opened)  # the orientation a viewer shows
            image.load()
    return resize_center_crop(image.convert("RGB"), resolution)


def _snapshot_mask(record: IngestRecord, resolution: int) -> Image.Image:
    if record.mask_array is not None:
        mask = Image.fromarray(record.mask_array.astype(np.uint8), mode="L")
    else:
        with Image.open(record.mask_path) as opened:
            mask = opened.convert("L") if opened.mode not in ("L", "P") else opened.copy()
    return resize_center_crop(mask, resolution, Image.Resampling.NEAREST)  # class ids must not blend


def ingest_split(config: dict[str, Any], seed: int, dataset: ArtifactLike, report: ArtifactLike,
                 task: str = "text_to_image") -> dict[str, Any]:
    """Check every record of the configured source, split it, and write the Dataset artifact.

    Inputs: the `ingest` config section, the run seed and the task.
    Outputs: `dataset` (folder, see trainflow.data.manifest) with counts and
    `content_sha256` in its metadata; `report` (Markdown) listing rejected records.
    Fails (UserFacingError) only if the source is missing or too few records are usable.
    """
    cfg: IngestConfig = parse_section(IngestConfig, config, "the ingest section")
    try:
        check_task_fit(task, cfg, None, None)
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    with timed_stage("ingest_split", dataset, report):
        source = read_source(cfg, task)
        valid, rejected = source.records, source.rejected
        if cfg.max_records is not None and len(valid) > cfg.max_records:
            valid = sorted(random.Random(seed).sample(valid, cfg.max_records), key=lambda r: r.record_id)
        if len(valid) < 3:
            reasons = "; ".join(f"{r.image_ref or r.source}: {r.reason}" for r in rejected[:5])
            raise UserFacingError(
                f"only {len(valid)} usable records in {cfg.source_description} (need at least 3). First problems: {reasons}")
        assignment = assign_splits(valid, cfg.split, seed)
        counters: Counter[str] = Counter()
        with atomic_directory(dataset.path) as staging:
            lines = [json.dumps(_manifest_line(record, assignment[record.record_id], counters, staging, cfg, source.kind))
                     for record in tqdm(valid, desc="ingest: snapshotting records", unit="rec", mininterval=2.0, disable=None)]
            (staging / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (staging / "rejected.jsonl").write_text(
                "".join(json.dumps({"source": r.source, "image": r.image_ref, "reason": r.reason}) + "\n" for r in rejected),
                encoding="utf-8")
            atomic_write_json(staging / DATASET_INFO, _dataset_info(source, cfg, task))
        summary = {
            "num_records": len(valid),
            "num_rejected": len(rejected),
            **{f"num_{split}": counters[split] for split in SPLITS},
            "content_sha256": content_hash(valid),
            "kind": source.kind,
            "resolution": cfg.resolution if source.kind == "image" else 0,
            "has_labels": all(r.label is not None for r in valid),
            "source": cfg.source_description,
        }
        dataset.metadata.update(summary)
        atomic_write_text(report.path, _report_markdown(summary, rejected))
        report.metadata["num_rejected"] = len(rejected)
    for problem in rejected[:20]:
        print(f"ingest: skipped {problem.image_ref or problem.source} ({problem.source}): {problem.reason}")
    if len(rejected) > 20:
        print(f"ingest: ... and {len(rejected) - 20} more skipped records (see the ingest report)")
    return summary


def _manifest_line(record: IngestRecord, split: str, counters: Counter, staging: Path, cfg: IngestConfig, kind: str) -> dict:
    number = counters[split]
    counters[split] += 1
    line: dict[str, Any] = {"id": record.record_id, "split": split, "sha256": record.sha256}
    if kind == "image":
        relative = f"images/{split}/{number:07d}.png"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        _snapshot_image(record, cfg.resolution).save(staging / relative)
        line["image"] = relative
        if record.mask_path is not None or record.mask_array is not None:
            mask_relative = f"masks/{split}/{number:07d}.png"
            (staging / mask_relative).parent.mkdir(parents=True, exist_ok=True)
            _snapshot_mask(record, cfg.resolution).save(staging / mask_relative)
            line["mask"] = mask_relative
    for key in ("caption", "label", "targets", "features"):
        value = getattr(record, key)
        if value is not None:
            line[key] = list(value) if isinstance(value, tuple) else value
    return line


def _dataset_info(source: SourceData, cfg: IngestConfig, task: str) -> dict[str, Any]:
    return {"task": task, "kind": source.kind, "class_names": source.class_names, "target_names": source.target_names,
            "feature_names": source.feature_names, "resolution": cfg.resolution if source.kind == "image" else None}


def _report_markdown(summary: dict[str, Any], rejected: list) -> str:
    lines = [
        "# Dataset ingest",
        "",
        f"Source: `{summary['source']}`  ",
        f"Kept {summary['num_records']} records: train {summary['num_train']}, val {summary['num_val']}, "
        f"test {summary['num_test']}; content sha256 `{summary['content_sha256'][:16]}…`",
        "",
    ]
    if rejected:
        lines += [f"## Skipped records ({len(rejected)})", "", "| record | declared in | reason |", "|---|---|---|"]
        lines += [f"| `{r.image_ref}` | `{r.source}` | {r.reason} |" for r in rejected]
    else:
        lines.append("No records were skipped.")
    return "\n".join(lines) + "\n"
