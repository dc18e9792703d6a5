"""Batches of labelled records, each with `ratio` unlabelled partners (FixMatch's batch shape), resumable exactly.

An epoch is one pass over the labelled records (the engine's EpochPlan shuffles and shards them as for any
task). Key (i, epoch, seed) reads labelled record i and the unlabelled records at positions i·ratio ...
i·ratio + ratio − 1 (wrapping) of a permutation seeded by (seed, epoch): within an epoch the labelled records
of all ranks draw disjoint unlabelled records, the draw changes every epoch, and it depends on nothing but
the key, so a resumed run or another worker reads exactly the same batch.

    inputs, label, index     the labelled records (as the split's dataset gives them)
    unlabelled_inputs        (B · ratio, ...) their unlabelled partners (absent when ratio is 0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainflow.data.loading.batch_collate import RecordBatch
from trainflow.data.loading.supervised_batches import as_sample_keys
from trainflow.data.loading.transforms import SampleKey


class PartlyLabelledBatches(Dataset):
    takes_sample_keys = True

    def __init__(self, split: Any, labelled: list[int], unlabelled: list[int], ratio: int, seed: int) -> None:
        self.split, self.labelled, self.unlabelled = split, list(labelled), list(unlabelled)
        self.ratio, self.seed = ratio, seed
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labelled)

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        """The unlabelled records' order in `epoch` (kept for the epochs in use, a worker sees one or two)."""
        if (seed, epoch) not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(next(iter(self._orders)))
            self._orders[(seed, epoch)] = np.random.default_rng([seed, epoch, 7]).permutation(len(self.unlabelled))
        return self._orders[(seed, epoch)]

    def __getitems__(self, keys: list) -> RecordBatch:
        keys = as_sample_keys(keys, self.seed)
        labelled = self.split.__getitems__([SampleKey(self.labelled[k.index], k.epoch, k.seed) for k in keys]).collated
        batch = dict(labelled)
        if self.ratio:
            partners = []
            for key in keys:
                order = self._order(key.seed, key.epoch)
                for offset in range(self.ratio):
                    position = order[(key.index * self.ratio + offset) % len(order)]
                    partners.append(SampleKey(self.unlabelled[position], key.epoch, key.seed))
            batch["unlabelled_inputs"] = self.split.__getitems__(partners).collated["inputs"]
        return RecordBatch(batch)

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        collated = self.__getitems__([key]).collated
        return {name: value[0] if name != "unlabelled_inputs" else value for name, value in collated.items()}
