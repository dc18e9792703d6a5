"""Which records each optimizer step sees: seeded per epoch, sharded per rank, resumable mid-epoch.

Epoch e's order is DistributedSampler's permutation for (seed, e), so one
process and N ranks draw from the same shuffled list. Each rank's share is cut
into optimizer steps of micro_batch × accumulation records; a tail that cannot
fill a whole step is dropped (every step has the same effective batch). The
position inside an epoch is counted in records, so a resumed run continues from
the next batch even if an out-of-memory retry changed the micro-batch size.

One DataLoader serves every epoch (built by trainflow.data.loading.loader_factory), so
persistent workers keep their open files and caches; only its batch plan
changes. A dataset with `bucket_ids` in several buckets (aspect-ratio buckets) gets
steps that each hold one bucket (trainflow.training.bucketed_batches), seeded the same way. A dataset that augments (`takes_sample_keys`) receives
SampleKey(index, epoch, seed) instead of an index, so a record is augmented the
same way whichever worker reads it and whether or not the run was resumed.
The loader handed to the engine is a MonitoredLoader: its `step_fields()` adds
data-wait share, batches/s and memory to each step record.
"""

from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from trainflow.config.data_loading import DataLoadingConfig
from trainflow.data.loading.loader_factory import PlannedBatches, loader_options, takes_sample_keys
from trainflow.data.loading.loader_monitor import MonitoredLoader
from trainflow.errors import ConfigError
from trainflow.training.bucketed_batches import (
    bucket_batches, bucketed_epoch_order, bucketed_steps_per_epoch, distinct_buckets, unreachable_buckets,
)
from trainflow.training.distributed import ProcessInfo


def _generator_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


class EpochPlan:
    def __init__(self, dataset: Dataset, info: ProcessInfo, seed: int, records_per_step: int,
                 loading: DataLoadingConfig | None = None) -> None:
        if isinstance(dataset, IterableDataset):
            raise ConfigError("train.data_loading.mode: training needs a map-style dataset (random access) to resume "
                              "an epoch exactly; use eager, memmap, cached or lazy")
        self.dataset = dataset
        self.info = info
        self.seed = seed
        self.records_per_step = records_per_step
        self.loading = loading
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=seed, drop_last=False)
        # Records of several shapes (aspect-ratio buckets): every step from one bucket (training.bucketed_batches).
        self.bucket_ids = dataset.bucket_ids if distinct_buckets(dataset) > 1 else None
        if self.bucket_ids is not None and info.is_main:
            for bucket, count in unreachable_buckets(self.bucket_ids, records_per_step, info.world_size).items():
                print(f"train: warning: bucket {_bucket_name(dataset, bucket)} holds {count} train records, fewer than "
                      f"one optimizer step ({records_per_step * info.world_size}); training never sees them. Lower "
                      "train.batch_size or widen ingest.buckets (fewer, larger buckets)", flush=True)
        self._batches = PlannedBatches(takes_sample_keys(dataset))
        self._loader: DataLoader | None = None
        self._loader_settings: tuple | None = None

    def steps_per_epoch(self) -> int:
        if self.bucket_ids is not None:
            return bucketed_steps_per_epoch(self.bucket_ids, self.records_per_step, self.info.world_size)
        return len(self.sampler) // self.records_per_step

    def indices(self, epoch: int) -> list[int]:
        if self.bucket_ids is not None:
            return bucketed_epoch_order(self.bucket_ids, self.seed, epoch, self.info.rank, self.info.world_size,
                                        self.records_per_step)
        self.sampler.set_epoch(epoch)
        usable = self.steps_per_epoch() * self.records_per_step
        return list(self.sampler)[:usable]

    def loader(self, epoch: int, start_record: int, micro_batch: int, num_workers: int | str, pin_memory: bool,
               collate_fn: Callable | None = None) -> MonitoredLoader:
        """Micro-batches of this rank for `epoch`, from record `start_record` of its share on."""
        remaining = self.indices(epoch)[start_record:]
        self._batches.set_plan([remaining[i: i + micro_batch] for i in range(0, len(remaining), micro_batch)],
                               epoch, self.seed)
        settings = (num_workers, pin_memory, collate_fn)
        if self._loader is None or settings != self._loader_settings:
            options = loader_options(num_workers, pin_memory, self.loading, _generator_seed(self.seed, epoch),
                                     collate_fn=collate_fn)
            self._loader, self._loader_settings = DataLoader(self.dataset, batch_sampler=self._batches, **options), settings
        # Worker seeds depend on (seed, epoch) only, however many loaders this process built before.
        self._loader.generator.manual_seed(_generator_seed(self.seed, epoch))
        return MonitoredLoader(self._loader)


def _bucket_name(dataset: Dataset, bucket: int) -> str:
    sizes = getattr(dataset, "bucket_sizes", None)
    return f"{sizes[bucket][1]}x{sizes[bucket][0]} (width x height)" if sizes else str(bucket)


def validation_loader(dataset: Dataset, info: ProcessInfo, batch_size: int, num_workers: int | str, pin_memory: bool,
                      collate_fn: Callable | None = None) -> DataLoader:
    """This rank's disjoint share of the validation set, in order, without the padding DistributedSampler adds;
    a batch never mixes buckets."""
    indices = range(info.rank, len(dataset), info.world_size)
    batches = PlannedBatches(keyed=False)
    batches.set_plan(bucket_batches(dataset, indices, batch_size), 0, 0)
    options = loader_options(num_workers, pin_memory, None, 0, collate_fn=collate_fn, persistent=False)
    return DataLoader(dataset, batch_sampler=batches, **options)
