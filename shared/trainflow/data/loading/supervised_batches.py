"""Rows of a supervised cache -> the batch a task trains on, with the split's transform applied per record.

    index   (B,)          int64    the record's position in its split
    label   (B,)          int64    -1 when the record has none
    inputs  (B, 3, H, W)  float32  images in [0, 1]   |   (B, F) float32 features
    targets (B, T)        float32  regression
    mask    (B, H, W)     int64    segmentation class ids
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainflow.data.loading.batch_collate import RecordBatch
from trainflow.data.loading.transforms import ImageTransform, SampleKey
from trainflow.errors import UserFacingError


def as_sample_keys(keys: Sequence[int | SampleKey], seed: int) -> list[SampleKey]:
    """Plain indices count as epoch 0 of `seed` (what `dataset[i]` sees outside a training loader)."""
    return [key if isinstance(key, SampleKey) else SampleKey(int(key), 0, seed) for key in keys]


def _transformed_images(rows: dict[str, np.ndarray], keys: list[SampleKey], transform: ImageTransform):
    images, masks = [], []
    has_masks = "masks" in rows
    for position, key in enumerate(keys):
        image = np.ascontiguousarray(rows["images"][position].transpose(1, 2, 0))
        mask = rows["masks"][position] if has_masks else None
        image, mask = transform(image, mask, key)
        images.append(image)
        masks.append(mask)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise UserFacingError(f"train.transforms produced images of different sizes {sorted(shapes)}; end "
                              "train.transforms.augment with a fixed-size step (Resize, RandomResizedCrop) or set resize")
    stacked = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    return stacked, (torch.from_numpy(np.stack(masks)) if has_masks else None)


def build_record_batch(rows: dict[str, np.ndarray], keys: list[SampleKey], transform: ImageTransform | None) -> RecordBatch:
    """One RecordBatch from column rows read for `keys` (same order)."""
    batch = {"index": torch.tensor([key.index for key in keys], dtype=torch.int64),
             "label": torch.from_numpy(np.asarray(rows["labels"], dtype=np.int64))}
    if "images" in rows:
        images, masks = (_transformed_images(rows, keys, transform) if transform is not None
                         else (torch.from_numpy(rows["images"]), torch.from_numpy(rows["masks"]) if "masks" in rows else None))
        batch["inputs"] = images.float().div_(255.0)
        if masks is not None:
            batch["mask"] = masks.long()
    else:
        batch["inputs"] = torch.from_numpy(np.asarray(rows["features"], dtype=np.float32))
    if "targets" in rows:
        batch["targets"] = torch.from_numpy(np.asarray(rows["targets"], dtype=np.float32))
    return RecordBatch(batch)
