"""Stage 1: read, check, split and snapshot an image/caption dataset."""

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
from trainflow.atomic_files import atomic_directory, atomic_write_text
from trainflow.config import IngestConfig, parse_section
from trainflow.data.manifest import SPLITS
from trainflow.data.records import ValidRecord, read_records
from trainflow.data.split import assign_splits
from trainflow.errors import UserFacingError


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop the center square."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    resized = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left = (resized.width - resolution) // 2
    top = (resized.height - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def content_hash(records: list[ValidRecord]) -> str:
    """Hash of what the data says (image bytes, caption, label), independent of paths' order."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.record_id):
        digest.update(f"{record.record_id}\t{record.sha256}\t{record.caption}\t{record.label}\n".encode())
    return digest.hexdigest()


def ingest_split(config: dict[str, Any], seed: int, dataset: ArtifactLike, report: ArtifactLike) -> dict[str, Any]:
    """Check every record of `config['dataset_dir']`, split it, and write the Dataset artifact.

    Inputs: the `ingest` config section and the run seed.
    Outputs: `dataset` (folder, see trainflow.data.manifest) with counts and
    `content_sha256` in its metadata; `report` (Markdown) listing rejected records.
    Fails (UserFacingError) only if the folder is missing or too few records are usable.
    """
    cfg: IngestConfig = parse_section(IngestConfig, config, "the ingest section")
    with timed_stage("ingest_split", dataset, report):
        valid, rejected = read_records(cfg.dataset_dir, cfg.image_column, cfg.caption_column, cfg.label_column)
        if cfg.max_records is not None and len(valid) > cfg.max_records:
            valid = sorted(random.Random(seed).sample(valid, cfg.max_records), key=lambda r: r.record_id)
        if len(valid) < 3:
            reasons = "; ".join(f"{r.image_ref or r.source}: {r.reason}" for r in rejected[:5])
            raise UserFacingError(
                f"only {len(valid)} usable records in {cfg.dataset_dir} (need at least 3). First problems: {reasons}"
            )
        assignment = assign_splits(valid, cfg.split, seed)
        labels_known = all(r.label is not None for r in valid)

        with atomic_directory(dataset.path) as staging:
            counters: Counter[str] = Counter()
            lines = []
            for record in tqdm(valid, desc="ingest: resizing images", unit="img", mininterval=2.0, disable=None):
                split = assignment[record.record_id]
                relative = f"images/{split}/{counters[split]:07d}.png"
                counters[split] += 1
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                with Image.open(record.image_path) as image:
                    resize_center_crop(image, cfg.resolution).save(staging / relative)
                lines.append(json.dumps({
                    "id": record.record_id, "split": split, "image": relative, "caption": record.caption,
                    "label": record.label, "sha256": record.sha256,
                }))
            (staging / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (staging / "rejected.jsonl").write_text(
                "".join(json.dumps({"source": r.source, "image": r.image_ref, "reason": r.reason}) + "\n" for r in rejected),
                encoding="utf-8",
            )

        summary = {
            "num_records": len(valid),
            "num_rejected": len(rejected),
            **{f"num_{split}": counters[split] for split in SPLITS},
            "content_sha256": content_hash(valid),
            "resolution": cfg.resolution,
            "has_labels": labels_known,
            "source_dir": str(Path(cfg.dataset_dir).expanduser().resolve()),
        }
        dataset.metadata.update(summary)
        atomic_write_text(report.path, _report_markdown(summary, rejected))
        report.metadata["num_rejected"] = len(rejected)
    for problem in rejected:
        print(f"ingest: skipped {problem.image_ref or problem.source} ({problem.source}): {problem.reason}")
    return summary


def _report_markdown(summary: dict[str, Any], rejected: list) -> str:
    lines = [
        "# Dataset ingest",
        "",
        f"Source: `{summary['source_dir']}`  ",
        f"Kept {summary['num_records']} records: train {summary['num_train']}, val {summary['num_val']}, "
        f"test {summary['num_test']}; content sha256 `{summary['content_sha256'][:16]}…`",
        "",
    ]
    if rejected:
        lines += [f"## Skipped records ({len(rejected)})", "", "| image | declared in | reason |", "|---|---|---|"]
        lines += [f"| `{r.image_ref}` | `{r.source}` | {r.reason} |" for r in rejected]
    else:
        lines.append("No records were skipped.")
    return "\n".join(lines) + "\n"
