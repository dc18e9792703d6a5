"""The train split as an epoch of instance and class images (DreamBooth prior preservation) with repeats.

A fixed index space per run: instance slots (each instance record `repeats` times) then class slots (their
count set by the ratio, or every class image `repeats` times). The engine's batch plan shuffles and shards
that space as it would any dataset, so resume and DDP stay exact. When the ratio leaves fewer class slots
than class images, each slot walks through its bucket's class images epoch by epoch (a pure function of the
SampleKey's epoch), so over a run every class image is used while every slot keeps its bucket.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from trainflow.config import PriorPreservationConfig
from trainflow.data.loading.transforms import SampleKey
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.errors import ConfigError


class MixedTrainRecords(Dataset):
    """Items of the underlying CachedLatents, each with `prior` (bool): True for class images."""

    takes_sample_keys = True  # the epoch picks which class image a class slot holds

    def __init__(self, records: CachedLatents, repeats: int, prior: PriorPreservationConfig | None, seed: int) -> None:
        self.records = records
        flags = records.prior_flags if records.prior_flags is not None else np.zeros(len(records), dtype=bool)
        self.instances = np.flatnonzero(~flags)
        classes = np.flatnonzero(flags)
        if prior is not None and not len(classes):
            raise ConfigError("train.diffusion.prior_preservation: the cache holds no class images; set "
                              "ingest.prior_preservation.dataset_dir (and run ingest and build_cache again) or remove it")
        if not len(self.instances):
            raise ConfigError("ingest.prior_preservation: the train split holds only class images; ingest instance "
                              "images beside them")
        prior = prior or PriorPreservationConfig()
        self.repeats = repeats
        instance_slots = len(self.instances) * repeats
        count = (round(prior.ratio / (1 - prior.ratio) * instance_slots) if prior.ratio is not None
                 else len(classes) * prior.repeats) if len(classes) else 0
        # A seeded order of the class images, grouped by bucket: class slot j starts at the j-th of its bucket.
        order = classes[random.Random(seed).sample(range(len(classes)), len(classes))] if len(classes) else classes
        self.class_buckets: dict[int, np.ndarray] = {}
        for index in order:
            bucket = int(records.bucket_ids[index])
            self.class_buckets[bucket] = np.append(self.class_buckets.get(bucket, np.zeros(0, dtype=np.int64)), index)
        self.slot_bucket = np.array([int(records.bucket_ids[order[j % len(order)]]) for j in range(count)], dtype=np.int64)
        self.slot_rank = np.zeros(count, dtype=np.int64)  # j's position among the slots of its bucket
        seen: dict[int, int] = {}
        for j, bucket in enumerate(self.slot_bucket.tolist()):
            self.slot_rank[j], seen[bucket] = seen.get(bucket, 0), seen.get(bucket, 0) + 1
        self.slots_per_bucket = seen
        self.instance_slots = instance_slots
        self.bucket_ids = np.concatenate([np.tile(records.bucket_ids[self.instances], repeats), self.slot_bucket])
        self.bucket_sizes = records.bucket_sizes
        self.class_share = count / max(count + instance_slots, 1)

    def __len__(self) -> int:
        return len(self.bucket_ids)

    def source(self, key: int | SampleKey) -> tuple[int, int]:
        """(the underlying record, which copy of it this slot is) for one draw."""
        slot, epoch = (key.index, key.epoch) if isinstance(key, SampleKey) else (int(key), 0)
        if slot < self.instance_slots:
            return int(self.instances[slot % len(self.instances)]), slot // len(self.instances)
        j = slot - self.instance_slots
        bucket = int(self.slot_bucket[j])
        members = self.class_buckets[bucket]
        return int(members[(self.slot_rank[j] + epoch * self.slots_per_bucket[bucket]) % len(members)]), 0

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, copy = self.source(key)
        inner = (SampleKey(index, key.epoch * (self.repeats + 1) + copy, key.seed)  # copies of a record flip apart
                 if isinstance(key, SampleKey) and self.records.takes_sample_keys else index)
        item = self.records[inner]
        item["prior"] = torch.tensor(bool(self.records.prior_flags is not None and self.records.prior_flags[index]))
        return item


def needs_mixing(records: CachedLatents, repeats: int, prior: PriorPreservationConfig | None) -> bool:
    return repeats != 1 or prior is not None or records.prior_flags is not None

