"""Batches that never mix buckets: for datasets whose records come in several shapes (aspect-ratio buckets).

A dataset opts in with `bucket_ids`, one int per record; records of one bucket stack into one tensor.
Training (`bucketed_epoch_order`): each epoch, every bucket's records are shuffled by a generator seeded
with (seed, epoch), cut into global steps of records_per_step × world_size records (a bucket's tail
that cannot fill a whole step waits for a later epoch's shuffle), the steps are shuffled, and rank r
takes the r-th slice of each step. So every optimizer step, on every rank, draws from one bucket; the
ranks' shares are disjoint (each record at most once per epoch across ranks); and the order is a pure
function of (seed, epoch), which keeps mid-epoch resume exact. Evaluation (`bucket_batches`) keeps
every record, in order within its bucket; per-record losses make the totals independent of batching.

Written here rather than taken from a library: torch's samplers know nothing of shapes, and the bucket
samplers of the diffusers training scripts neither shard by rank nor resume mid-epoch.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def distinct_buckets(dataset) -> int:
    """How many buckets a dataset's records fall in (1 for a dataset without `bucket_ids`)."""
    bucket_ids = getattr(dataset, "bucket_ids", None)
    return 1 if bucket_ids is None or len(bucket_ids) == 0 else len(set(int(b) for b in bucket_ids))


def _members(bucket_ids: Sequence[int], indices: Iterable[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for index in indices:
        members.setdefault(int(bucket_ids[index]), []).append(index)
    return members


def bucketed_steps_per_epoch(bucket_ids: Sequence[int], records_per_step: int, world_size: int) -> int:
    per_global_step = records_per_step * world_size
    return sum(len(m) // per_global_step for m in _members(bucket_ids, range(len(bucket_ids))).values())


def unreachable_buckets(bucket_ids: Sequence[int], records_per_step: int, world_size: int) -> dict[int, int]:
    """{bucket: records} for buckets too small to fill one optimizer step: training never sees them."""
    per_global_step = records_per_step * world_size
    return {b: len(m) for b, m in sorted(_members(bucket_ids, range(len(bucket_ids))).items()) if len(m) < per_global_step}


def bucketed_epoch_order(bucket_ids: Sequence[int], seed: int, epoch: int, rank: int, world_size: int,
                         records_per_step: int) -> list[int]:
    """This rank's records for `epoch`, as consecutive optimizer steps of `records_per_step`, each from one bucket."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    per_global_step = records_per_step * world_size
    steps: list[list[int]] = []
    for _, members in sorted(_members(bucket_ids, range(len(bucket_ids))).items()):
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        usable = len(shuffled) // per_global_step * per_global_step
        steps += [shuffled[start:start + per_global_step] for start in range(0, usable, per_global_step)]
    order = torch.randperm(len(steps), generator=generator).tolist()
    return [index for step in order for index in steps[step][rank * records_per_step:(rank + 1) * records_per_step]]


def bucket_batches(dataset, indices: Iterable[int], batch_size: int) -> list[list[int]]:
    """`indices` cut into batches of at most `batch_size` that each hold one bucket; nothing dropped."""
    indices = list(indices)
    bucket_ids = getattr(dataset, "bucket_ids", None)
    groups = _members(bucket_ids, indices).values() if bucket_ids is not None and len(indices) else [indices]
    return [group[start:start + batch_size] for group in groups for start in range(0, len(group), batch_size)]
