"""A broken-input corpus built at test time from scikit-learn's digits: one record per validation rule.

`build_broken_imagefolder(folder)` writes an imagefolder (metadata.jsonl + images) in which every bad line
is expected to be rejected with a known rule, and every good line kept. Nothing binary is committed: images
are the bundled 8x8 digits, upscaled, and the broken files are derived from them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

GOOD = "kept"


@functools.lru_cache(maxsize=1)
def bundled_digits():
    """scikit-learn's 1,797 8x8 digit scans (uint8) and their labels, read once."""
    digits = load_digits()
    return (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8), digits.target


def digit_image(index: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    """Digit `index` of scikit-learn's bundled set as a `size` x `size` image in `mode`."""
    scan = bundled_digits()[0][index]
    return Image.fromarray(scan, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert(mode)


def png_bytes(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def header_only_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels (decoding it would allocate them all)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 4)) + chunk(b"IEND", b"")


@dataclasses.dataclass
class BrokenCorpus:
    root: Path
    expected: dict[str, str]  # ref as reported (image path as written, or metadata.jsonl:LINE) -> rule or GOOD
    lines: int  # metadata lines written
    kept_duplicate_of: dict[str, str]  # ref of a byte-identical copy -> id of the record kept instead
    listed_twice_source: str  # where images/good-001.png is listed a second time (rule duplicate_id)


def _line(row: Any) -> str:
    return row if isinstance(row, str) else json.dumps(row)


def build_broken_imagefolder(folder: Path, good: int = 24) -> BrokenCorpus:
    """The corpus; ingest it with label_column=label, target_columns=[score], class_names=0..9,
    min_image_size=8, max_image_pixels=1_000_000, task text_to_image."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows: list[tuple[Any, str, str]] = []  # (metadata row or raw line, expected ref, expected rule)

    def add(name: str, data: bytes | None, row_extra: dict[str, Any], rule: str, ref: str | None = None) -> None:
        if data is not None:
            (images / name).write_bytes(data)
        row = {"file_name": f"images/{name}", "text": "a handwritten digit", "label": 1, "score": 0.5, **row_extra}
        rows.append((row, ref or str(row["file_name"]), rule))

    for index in range(good):
        add(f"good-{index:03d}.png", png_bytes(digit_image(index)), {"label": int(bundled_digits()[1][index])}, GOOD)
    whole = png_bytes(digit_image(100))
    jpeg = png_bytes(digit_image(101), "JPEG", quality=90)
    # images
    add("truncated.png", whole[: len(whole) // 2], {}, "image_undecodable")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], {}, "image_undecodable")
    add("not-an-image.png", b"\x89PNG\r\n\x1a\n this is not an image", {}, "image_undecodable")
    add("empty.png", b"", {}, "image_undecodable")
    add("bomb.png", header_only_bomb(40_000, 40_000), {}, "image_too_many_pixels")
    add("just-over-budget.png", png_bytes(digit_image(102, size=1001, mode="L")), {}, "image_too_many_pixels")
    add("tiny.png", png_bytes(digit_image(103, size=4)), {}, "image_too_small")
    # captions
    add("no-caption.png", png_bytes(digit_image(104)), {"text": None}, "caption_missing")
    rows.append(({"file_name": "images/no-caption-key.png", "label": 1, "score": 0.5}, "images/no-caption-key.png", "caption_missing"))
    (images / "no-caption-key.png").write_bytes(png_bytes(digit_image(105)))
    add("blank-caption.png", png_bytes(digit_image(106)), {"text": "   "}, "caption_empty")
    add("number-caption.png", png_bytes(digit_image(107)), {"text": 7}, "caption_not_text")
    add("list-caption.png", png_bytes(digit_image(108)), {"text": ["a", "digit"]}, "caption_not_text")
    add("surrogate-caption.png", png_bytes(digit_image(109)), {"text": "\ud800 broken"}, "caption_not_text")
    add("long-caption.png", png_bytes(digit_image(110)), {"text": " ".join(["digit"] * 200)}, GOOD)
    # labels and targets
    add("label-12.png", png_bytes(digit_image(111)), {"label": 12}, "label_unknown_class")
    add("label-negative.png", png_bytes(digit_image(112)), {"label": -1}, "label_unknown_class")
    add("label-word.png", png_bytes(digit_image(113)), {"label": "seven"}, "label_not_integer")
    add("label-fraction.png", png_bytes(digit_image(114)), {"label": 2.5}, "label_not_integer")
    add("label-bool.png", png_bytes(digit_image(115)), {"label": True}, "label_not_integer")
    add("label-list.png", png_bytes(digit_image(116)), {"label": [1]}, "label_not_integer")
    add("target-nan.png", png_bytes(digit_image(117)), {"score": float("nan")}, "target_not_finite")
    add("target-inf.png", png_bytes(digit_image(118)), {"score": float("inf")}, "target_not_finite")
    add("target-text.png", png_bytes(digit_image(119)), {"score": "high"}, "target_not_number")
    add("target-null.png", png_bytes(digit_image(120)), {"score": None}, "target_missing")
    # paths
    (folder.parent / "outside.png").write_bytes(png_bytes(digit_image(121)))
    os.symlink(folder.parent / "outside.png", images / "link-out.png")
    rows.append(({"file_name": str(folder.parent / "outside.png"), "text": "x", "label": 1, "score": 0.5},
                 str(folder.parent / "outside.png"), "absolute_path"))
    rows.append(({"file_name": "../outside.png", "text": "x", "label": 1, "score": 0.5}, "../outside.png", "path_outside_root"))
    rows.append(({"file_name": "images/../../outside.png", "text": "x", "label": 1, "score": 0.5}, "images/../../outside.png", "path_outside_root"))
    add("link-out.png", None, {}, "symlink_outside_root")
    rows.append(({"file_name": "images/nul\x00.png", "text": "x", "label": 1, "score": 0.5}, "images/nul\x00.png", "invalid_path"))
    for value in (42, ["images/good-000.png"], None, "", {"path": "x"}):
        rows.append(({"file_name": value, "text": "x", "label": 1, "score": 0.5},
                     value if isinstance(value, str) else repr(value), "invalid_path"))
    rows.append(({"file_name": "images/" + "n" * 5000 + ".png", "text": "x", "label": 1, "score": 0.5},
                 ("images/" + "n" * 5000)[:197] + "...", "invalid_path"))
    rows.append(({"file_name": "images/missing.png", "text": "x", "label": 1, "score": 0.5}, "images/missing.png", "missing_file"))
    rows.append(({"file_name": "images", "text": "x", "label": 1, "score": 0.5}, "images", "missing_file"))
    # duplicates: a byte-identical copy under a later name, and one file listed twice
    (images / "zz-copy-of-good-000.png").write_bytes((images / "good-000.png").read_bytes())
    rows.append(({"file_name": "images/zz-copy-of-good-000.png", "text": "x", "label": 0, "score": 0.5},
                 "images/zz-copy-of-good-000.png", "duplicate_content"))
    listed_twice_line = len(rows) + 1
    rows.append(({"file_name": "images/good-001.png", "text": "again", "label": 1, "score": 0.5}, "", "duplicate_id"))
    # metadata lines
    rows.append(("{not json", "metadata.jsonl:{line}", "metadata_line"))
    rows.append(("[1, 2, 3]", "metadata.jsonl:{line}", "metadata_line"))
    rows.append(('{"text": "no file name"}', "metadata.jsonl:{line}", "metadata_line"))
    rows.append(('{"file_name": "images/good-002.png", "label": 1' + "9" * 5000 + "}", "metadata.jsonl:{line}", "metadata_line"))
    raw_lines, expected = [], {}
    for number, (row, ref, rule) in enumerate(rows, start=1):
        raw_lines.append(_line(row).encode("utf-8", "surrogatepass"))
        if rule != "duplicate_id":  # its ref is the kept record's id; see listed_twice_source
            expected[ref.format(line=number) if "{line}" in ref else ref] = rule
    raw_lines.append(b'{"file_name": "images/bad-\xff\xfe.png", "text": "x"}')  # not UTF-8
    expected[f"metadata.jsonl:{len(raw_lines)}"] = "metadata_line"
    (folder / "metadata.jsonl").write_bytes(b"\n".join(raw_lines) + b"\n")
    return BrokenCorpus(folder, expected, len(raw_lines), {"images/zz-copy-of-good-000.png": "images/good-000.png"},
                        f"metadata.jsonl:{listed_twice_line}")


def build_broken_segmentation(folder: Path) -> dict[str, str]:
    """An imagefolder with masks (class ids 0..2, class_names of 3): image path -> expected rule or GOOD."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    expected, lines = {}, []

    def add(name: str, mask: Image.Image | bytes | None, rule: str, mask_ref: Any = None) -> None:
        image = digit_image(len(lines), size=16)
        image.save(folder / "images" / f"{name}.png")
        if isinstance(mask, Image.Image):
            mask.save(folder / "masks" / f"{name}.png")
        elif isinstance(mask, bytes):
            (folder / "masks" / f"{name}.png").write_bytes(mask)
        lines.append({"file_name": f"images/{name}.png", "mask": mask_ref if mask_ref is not None else f"masks/{name}.png"})
        expected[f"images/{name}.png"] = rule

    def ids(values: np.ndarray) -> Image.Image:
        return Image.fromarray(values.astype(np.uint8), mode="L")

    for index in range(6):
        add(f"good-{index}", ids(np.arange(256).reshape(16, 16) % 3), GOOD)
    palette = Image.fromarray((np.arange(256).reshape(16, 16) % 3).astype(np.uint8), mode="P")
    add("palette-mask", palette, GOOD)
    add("wrong-size", ids(np.zeros((8, 16))), "mask_wrong_size")
    add("unknown-class", ids(np.full((16, 16), 7)), "mask_unknown_class")
    add("rgb-mask", Image.new("RGB", (16, 16), (1, 1, 1)), "mask_mode")
    add("broken-mask", b"not a png", "mask_undecodable")
    add("missing-mask", None, "missing_file")
    add("escaping-mask", None, "path_outside_root", mask_ref="../../etc/passwd")
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return expected


def write_digit_imagefolder(root: Path, count: int, start: int = 0, size: int = 16, extra=None) -> list[dict[str, Any]]:
    """A clean imagefolder of digits start..start+count-1 (caption and label), plus `extra(index)` columns."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    labels = bundled_digits()[1]
    rows = []
    for index in range(start, start + count):
        name = f"images/digit-{index:04d}.png"
        digit_image(index, size=size).save(root / name)
        rows.append({"file_name": name, "text": f"a handwritten digit {labels[index]}", "label": int(labels[index]),
                     **(extra(index) if extra else {})})
    with (root / "metadata.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    return rows
