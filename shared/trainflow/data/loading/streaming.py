"""Streaming mode: an IterableDataset that reads a split's shards block by block, in bounded memory.

Each epoch the split is cut into blocks of `block_records` consecutive records
(never across a shard boundary); with shuffle on, the block order and the order
inside each block are permuted from (seed, epoch). Block k goes to consumer
k mod (world size × workers), consumer = rank × workers + worker id, so every
record is read by exactly one worker of one rank: no duplicates, no gaps, and no
padding (ranks may end with a few batches more or fewer than each other).

A process holds one block plus less than one batch of records at a time, so
memory does not grow with the data. Training uses map-style modes instead: its
exact mid-epoch resume needs random access (see trainflow.training.batch_plan).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from trainflow.data.loading.batch_collate import RecordBatch
from trainflow.data.cache.shards import ShardReader, ShardTable
from trainflow.data.loading.supervised_batches import build_record_batch
from trainflow.data.loading.transforms import ImageTransform, SampleKey


class SupervisedStream(IterableDataset):
    """Yields RecordBatches of `batch_size` (use DataLoader(stream, batch_size=None))."""

    def __init__(self, table: ShardTable, batch_size: int, transform: ImageTransform | None = None, seed: int = 0,
                 shuffle: bool = False, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 block_records: int = 256) -> None:
        self.table, self.batch_size, self.transform, self.seed = table, batch_size, transform, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.block_records = block_records
        self.epoch = 0
        self.reader = ShardReader(table, max_open_files=1)  # blocks come shard by shard: one file at a time

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (before iterating the DataLoader) to change the shuffled order."""
        self.epoch = epoch

    def blocks(self) -> list[tuple[int, int]]:
        """[start, stop) record ranges of this epoch, in the order they are handed out."""
        offsets = self.table.offsets
        blocks = [(start, min(start + self.block_records, int(offsets[n + 1])))
                  for n in range(len(self.table.paths))
                  for start in range(int(offsets[n]), int(offsets[n + 1]), self.block_records)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        return blocks

    def _consumer(self) -> tuple[int, int]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def _block_rows(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows = {name: self.reader.read_range(name, start, stop) for name in self.table.columns}
        indices = np.arange(start, stop, dtype=np.int64)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, start]).permutation(stop - start)
            indices, rows = indices[order], {name: array[order] for name, array in rows.items()}
        return indices, rows

    def _batch(self, indices: np.ndarray, rows: dict[str, np.ndarray]) -> RecordBatch:
        keys = [SampleKey(int(i), self.epoch, self.seed) for i in indices]
        return build_record_batch(rows, keys, self.transform)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        consumer, consumers = self._consumer()
        pending_indices, pending_rows = np.zeros(0, dtype=np.int64), None
        for start, stop in self.blocks()[consumer::consumers]:
            indices, rows = self._block_rows(start, stop)
            if pending_rows is not None:  # the tail of the previous block leads this one
                indices = np.concatenate([pending_indices, indices])
                rows = {name: np.concatenate([pending_rows[name], rows[name]]) for name in rows}
            whole = len(indices) - len(indices) % self.batch_size
            for low in range(0, whole, self.batch_size):
                high = low + self.batch_size
                yield self._batch(indices[low:high], {n: a[low:high] for n, a in rows.items()}).collated
            pending_indices, pending_rows = indices[whole:], {n: a[whole:] for n, a in rows.items()}
        if pending_rows is not None and len(pending_indices) and not self.drop_last:
            yield self._batch(pending_indices, pending_rows).collated
