"""Which records each optimizer step sees: seeded per epoch, sharded per rank, resumable mid-epoch.

Epoch e's order is DistributedSampler's permutation for (seed, e), so one
process and N ranks draw from the same shuffled list. Each rank's share is cut
into optimizer steps of micro_batch × accumulation records; a tail that cannot
fill a whole step is dropped (every step has the same effective batch). The
position inside an epoch is counted in records, so a resumed run continues from
the next batch even if an out-of-memory retry changed the micro-batch size.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainflow.training.distributed import ProcessInfo


class EpochPlan:
    def __init__(self, dataset: Dataset, info: ProcessInfo, seed: int, records_per_step: int) -> None:
        self.dataset = dataset
        self.info = info
        self.seed = seed
        self.records_per_step = records_per_step
        self.sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=seed, drop_last=False)

    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.records_per_step

    def indices(self, epoch: int) -> list[int]:
        self.sampler.set_epoch(epoch)
        usable = self.steps_per_epoch() * self.records_per_step
        return list(self.sampler)[:usable]

    def loader(self, epoch: int, start_record: int, micro_batch: int, num_workers: int, pin_memory: bool,
               collate_fn=None) -> DataLoader:
        """Micro-batches of this rank for `epoch`, from record `start_record` of its share on."""
        remaining = self.indices(epoch)[start_record:]
        batches = [remaining[i : i + micro_batch] for i in range(0, len(remaining), micro_batch)]
        # An explicit generator keeps worker seeds off the global RNG stream, which a resumed
        # run must find exactly where the uninterrupted run had it.
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                          generator=generator, collate_fn=collate_fn, persistent_workers=False)


def validation_loader(dataset: Dataset, info: ProcessInfo, batch_size: int, num_workers: int, pin_memory: bool,
                      collate_fn=None) -> DataLoader:
    """This rank's disjoint share of the validation set, in order, without the padding DistributedSampler adds."""
    indices = list(range(info.rank, len(dataset), info.world_size))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0), collate_fn=collate_fn)
