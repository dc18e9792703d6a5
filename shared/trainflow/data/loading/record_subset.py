"""Some records of a split, renumbered 0..n-1, that still take SampleKeys (torch's Subset indexes with them).

A record keeps the augmentation of its position in the whole split: key (i, epoch, seed) reads record
indices[i] as (indices[i], epoch, seed), so the same record is augmented the same way in or out of a subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from trainflow.data.loading.transforms import SampleKey


class RecordSubset(Dataset):
    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.takes_sample_keys = bool(getattr(dataset, "takes_sample_keys", False))

    def __len__(self) -> int:
        return len(self.indices)

    def _key(self, key: Any) -> Any:
        if isinstance(key, SampleKey):
            return SampleKey(self.indices[key.index], key.epoch, key.seed)
        return self.indices[int(key)]

    def __getitems__(self, keys: list) -> Any:
        return self.dataset.__getitems__([self._key(key) for key in keys])

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[self._key(key)]
