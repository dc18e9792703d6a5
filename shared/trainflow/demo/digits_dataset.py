"""The demo dataset: scikit-learn's bundled handwritten digits as a captioned imagefolder.

1,797 real 8x8 grayscale scans (UCI optical digits) ship inside scikit-learn,
so the demo needs no download. They are upsampled to 32x32 RGB PNGs and written
in the Hugging Face imagefolder layout, the same layout users bring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from trainflow.atomic_files import atomic_directory

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEMO_RESOLUTION = 32


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[label]}"


def digits_as_images(resolution: int = DEMO_RESOLUTION) -> tuple[list[Image.Image], np.ndarray]:
    """All digits as RGB PIL images (white strokes on black) and their labels."""
    digits = load_digits()
    scans = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    images = [
        Image.fromarray(scan, mode="L").resize((resolution, resolution), Image.Resampling.BICUBIC).convert("RGB")
        for scan in scans
    ]
    return images, digits.target.astype(int)


def write_digits_imagefolder(folder: str | Path, resolution: int = DEMO_RESOLUTION) -> int:
    """Write the imagefolder (images/*.png + metadata.jsonl); returns the record count."""
    images, labels = digits_as_images(resolution)
    with atomic_directory(folder) as staging:
        (staging / "images").mkdir()
        lines = []
        for index, (image, label) in enumerate(zip(images, labels)):
            name = f"images/digit-{index:04d}.png"
            image.save(staging / name)
            lines.append(json.dumps({"file_name": name, "text": digit_caption(int(label)), "label": int(label)}))
        (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return len(images)


def pad_to_canvas(image: Image.Image, index: int) -> Image.Image:
    """Every third digit as is (square), the others on a black landscape (3:2) or portrait (2:3) canvas,
    placed at a position that varies with `index`: mixed aspect ratios for ingest.buckets."""
    side = image.width
    shape = index % 3
    if shape == 0:
        return image
    long = side * 3 // 2
    canvas = Image.new("RGB", (long, side) if shape == 1 else (side, long))
    offset = (index * 7) % (long - side + 1)
    canvas.paste(image, (offset, 0) if shape == 1 else (0, offset))
    return canvas


def write_mixed_aspect_digits(folder: str | Path, resolution: int = DEMO_RESOLUTION) -> int:
    """The digits imagefolder with two thirds of the images padded to landscape or portrait canvases."""
    images, labels = digits_as_images(resolution)
    with atomic_directory(folder) as staging:
        (staging / "images").mkdir()
        lines = []
        for index, (image, label) in enumerate(zip(images, labels)):
            name = f"images/digit-{index:04d}.png"
            pad_to_canvas(image, index).save(staging / name)
            lines.append(json.dumps({"file_name": name, "text": digit_caption(int(label)), "label": int(label)}))
        (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return len(images)
