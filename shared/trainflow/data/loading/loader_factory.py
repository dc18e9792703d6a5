"""DataLoaders built one way: workers sized to the machine, seeded, pinned on CUDA, keyed for augmentation.

    resolve_num_workers   "auto" -> from the CPUs this process may use (cgroup quota included) and free memory
    loader_options        the DataLoader keyword arguments every loader shares
    PlannedBatches        a batch sampler over precomputed index lists that yields SampleKeys when the
                          dataset augments, so augmentation is keyed by (seed, epoch, record)
    training_loader       DistributedSampler (set_epoch) + drop_last: one epoch of one rank
    evaluation_loader     this rank's disjoint share, in order, nothing dropped

Worker seeds come from the loader's own generator, never from the global random
stream, so building a loader does not move the training run's random numbers.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from trainflow.config.data_loading import DataLoadingConfig
from trainflow.data.loading.batch_collate import collate_records
from trainflow.data.loading.transforms import SampleKey

MAX_AUTO_WORKERS = 8
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where a container's CPU quota and memory limit are visible
WORKER_OVERHEAD_BYTES = 512 * 2**20  # a forked worker's own interpreter, torch and copies (measured ~300-500 MB)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota (containers, pods)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        limit, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        quota = None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit = int((CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").read_text())
            quota = limit / period if limit > 0 else None
        except (OSError, ValueError):
            quota = None
    return max(1, min(count, int(quota)) if quota else count)


def available_memory_bytes() -> int:
    """Memory this process can still take: free system memory, capped by a cgroup v2 limit."""
    import psutil

    free = psutil.virtual_memory().available
    try:
        limit = (CGROUP_ROOT / "memory.max").read_text().strip()
        used = int((CGROUP_ROOT / "memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(free, 0)


def resolve_num_workers(requested: int | str, batch_bytes: int = 0, prefetch_factor: int = 2) -> int:
    """An explicit count as is; "auto": one CPU stays with the training process, each worker must fit
    in half the free memory (its overhead plus `prefetch_factor` batches), at most MAX_AUTO_WORKERS."""
    if requested != "auto":
        return int(requested)
    by_cpu = min(available_cpus() - 1, MAX_AUTO_WORKERS)
    per_worker = WORKER_OVERHEAD_BYTES + prefetch_factor * batch_bytes
    by_memory = int(available_memory_bytes() * 0.5 // per_worker)
    return max(0, min(by_cpu, by_memory))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: Python's and numpy's generators from the worker's torch seed (base seed + id),
    so code that draws from them in a worker is seeded by the loader's generator too."""
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)


def loader_options(num_workers: int | str, pin_memory: bool, loading: DataLoadingConfig | None, seed: int,
                   batch_bytes: int = 0, collate_fn: Callable | None = None, persistent: bool | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments: workers, pinning, prefetch, persistence, seeded generator, collate."""
    loading = loading or DataLoadingConfig()
    workers = resolve_num_workers(num_workers, batch_bytes, loading.prefetch_factor)
    pin = torch.cuda.is_available() and (pin_memory if loading.pin_memory == "auto" else bool(loading.pin_memory))
    options: dict[str, Any] = {
        "num_workers": workers, "pin_memory": pin, "collate_fn": collate_fn or collate_records,
        # An explicit generator keeps worker seeds off the global RNG stream, which a resumed
        # run must find exactly where the uninterrupted run had it.
        "generator": torch.Generator().manual_seed(seed),
    }
    if workers:
        keep = loading.persistent_workers if persistent is None else persistent
        options.update(worker_init_fn=seed_worker, prefetch_factor=loading.prefetch_factor, persistent_workers=keep)
    return options


class PlannedBatches(Sampler):
    """Yields the current plan's batches; the plan can change between epochs (one DataLoader, persistent workers).

    With `keyed` on, each index goes out as SampleKey(index, epoch, seed).
    """

    def __init__(self, keyed: bool) -> None:
        self.keyed = keyed
        self.batches: list[list[int]] = []
        self.epoch, self.seed = 0, 0

    def set_plan(self, batches: list[list[int]], epoch: int, seed: int) -> None:
        self.batches, self.epoch, self.seed = batches, epoch, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches:
            yield [SampleKey(int(i), self.epoch, self.seed) for i in batch] if self.keyed else list(batch)


def takes_sample_keys(dataset: Dataset) -> bool:
    return bool(getattr(dataset, "takes_sample_keys", False))


def rank_and_world() -> tuple[int, int]:
    """This process's data-parallel rank and world size (torch.distributed, else RANK/WORLD_SIZE, else 0/1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def training_loader(dataset: Dataset, batch_size: int, epoch: int, seed: int = 0, num_workers: int | str = 0,
                    loading: DataLoadingConfig | None = None, pin_memory: bool = False, drop_last: bool = True,
                    rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """One epoch of shuffled batches for this rank: DistributedSampler(seed).set_epoch(epoch), drop_last.

    Streaming datasets (IterableDataset with set_epoch) shard themselves; they get batch_size=None.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    options = loader_options(num_workers, pin_memory, loading, seed * 100_003 + epoch, persistent=False)
    if isinstance(dataset, IterableDataset):
        dataset.set_epoch(epoch)
        return DataLoader(dataset, batch_size=None, **options)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    order = list(sampler)
    usable = len(order) - len(order) % batch_size if drop_last else len(order)
    batches = PlannedBatches(takes_sample_keys(dataset))
    batches.set_plan([order[i: i + batch_size] for i in range(0, usable, batch_size)], epoch, seed)
    return DataLoader(dataset, batch_sampler=batches, **options)


def evaluation_loader(dataset: Dataset, batch_size: int, num_workers: int | str = 0, loading: DataLoadingConfig | None = None,
                      pin_memory: bool = False, rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """This rank's disjoint share of `dataset`, in order, without the padding DistributedSampler adds."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    options = loader_options(num_workers, pin_memory, loading, 0, persistent=False)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=None, **options)
    indices = list(range(rank, len(dataset), world_size))
    batches = PlannedBatches(keyed=False)
    batches.set_plan([indices[i: i + batch_size] for i in range(0, len(indices), batch_size)], 0, 0)
    return DataLoader(dataset, batch_sampler=batches, **options)
