"""The DataLoader factory (workers, seeds, ranks, padding) and the loader monitor, alone and in the engine's step log."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, str(Path(__file__).parent))

from trainflow.config import TrainConfig  # noqa: E402
from trainflow.config.data_loading import DataLoadingConfig  # noqa: E402
from trainflow.data.loading import loader_factory  # noqa: E402
from trainflow.data.loading.batch_collate import RecordBatch, collate_records, pad_collate  # noqa: E402
from trainflow.data.loading.loader_factory import (  # noqa: E402
    evaluation_loader, loader_options, resolve_num_workers, training_loader,
)
from trainflow.data.loading.loader_monitor import MonitoredLoader  # noqa: E402
from trainflow.training.batch_plan import EpochPlan  # noqa: E402
from trainflow.training.distributed import ProcessInfo  # noqa: E402


class Numbers(Dataset):
    """Record i is {"index": i, "pid": the reading process}; optionally slow to read."""

    def __init__(self, size: int, delay: float = 0.0) -> None:
        self.size, self.delay = size, delay

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        return {"index": torch.tensor(index), "pid": torch.tensor(os.getpid())}


def test_auto_workers_follow_the_cgroup_cpu_quota_and_free_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(loader_factory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    (tmp_path / "cpu.max").write_text("400000 100000\n")  # a pod limited to 4 CPUs on a 32-core node
    (tmp_path / "memory.max").write_text(str(64 * 2**30))
    (tmp_path / "memory.current").write_text(str(2**30))
    assert loader_factory.available_cpus() == 4
    assert resolve_num_workers("auto") == 3  # one CPU stays with training
    assert resolve_num_workers(5) == 5 and resolve_num_workers(0) == 0
    (tmp_path / "memory.max").write_text(str(3 * 2**30))  # 2 GiB free: half of it fits two workers
    assert resolve_num_workers("auto") == 2
    assert resolve_num_workers("auto", batch_bytes=2**30, prefetch_factor=2) == 0  # batches too big to prefetch


def test_loader_options_seed_workers_and_never_pin_without_cuda():
    options = loader_options(2, pin_memory=True, loading=DataLoadingConfig(prefetch_factor=3), seed=5)
    assert options["prefetch_factor"] == 3 and options["persistent_workers"] is True
    assert options["worker_init_fn"] is loader_factory.seed_worker
    assert options["pin_memory"] is torch.cuda.is_available()
    assert torch.equal(options["generator"].get_state(), torch.Generator().manual_seed(5).get_state())
    assert "prefetch_factor" not in loader_options(0, False, None, 0)  # only meaningful with workers


def test_training_loader_shards_ranks_reshuffles_per_epoch_and_drops_the_ragged_tail():
    def epoch(rank: int, number: int) -> list[int]:
        loader = training_loader(Numbers(50), batch_size=8, epoch=number, seed=1, rank=rank, world_size=2)
        batches = [batch["index"].tolist() for batch in loader]
        assert all(len(batch) == 8 for batch in batches)
        return [i for batch in batches for i in batch]

    rank0, rank1 = epoch(0, 0), epoch(1, 0)
    assert len(rank0) == len(rank1) == 24 and not set(rank0) & set(rank1)
    assert epoch(0, 0) == rank0 and epoch(0, 1) != rank0


def test_evaluation_loader_gives_each_rank_a_disjoint_complete_share():
    shares = [[i for b in evaluation_loader(Numbers(23), 4, rank=r, world_size=3) for i in b["index"].tolist()]
              for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(23))


def test_variable_length_captions_are_padded_with_their_lengths():
    records = [{"input_ids": torch.tensor([5, 6, 7]), "caption": "a seven", "label": 7},
               {"input_ids": torch.tensor([9]), "caption": "a one", "label": 1}]
    batch = pad_collate(records, pad_values={"input_ids": 49407})
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 49407, 49407]]
    assert batch["input_ids_lengths"].tolist() == [3, 1]
    assert batch["caption"] == ["a seven", "a one"] and batch["label"].tolist() == [7, 1]
    with pytest.raises(ValueError, match="field 'input_ids'"):
        pad_collate([{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(3)}])


def test_a_prebuilt_batch_passes_through_and_still_collates_record_by_record():
    batch = RecordBatch({"index": torch.arange(4), "inputs": torch.rand(4, 3, 2, 2)})
    assert collate_records(batch) is batch.collated
    by_record = default_collate(batch)
    assert all(torch.equal(by_record[k], batch.collated[k]) for k in batch.collated)


def test_the_monitor_tells_a_slow_loader_from_a_slow_model():
    slow_data = MonitoredLoader(DataLoader(Numbers(6, delay=0.05), batch_size=2))
    for _ in slow_data:
        pass
    fields = slow_data.step_fields()
    assert fields["data_wait_share"] > 0.8 and fields["data_rss_mb"] > 10
    assert 5 < fields["data_batches_per_second"] < 25  # 3 batches, 0.1 s each
    slow_model = MonitoredLoader(DataLoader(Numbers(6), batch_size=2))
    for _ in slow_model:
        time.sleep(0.05)
    assert slow_model.step_fields()["data_wait_share"] < 0.2


def test_one_loader_and_its_persistent_workers_serve_every_epoch():
    plan = EpochPlan(Numbers(40), ProcessInfo(), seed=0, records_per_step=8)
    epochs, loaders = [], set()
    for epoch in range(3):
        monitored = plan.loader(epoch, 0, 4, 2, pin_memory=False)
        loaders.add(id(monitored.loader))
        epochs.append([(batch["index"].tolist(), set(batch["pid"].tolist())) for batch in monitored])
    assert len(loaders) == 1
    pids = [pid for epoch in epochs for _, batch_pids in epoch for pid in batch_pids]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # the same two workers throughout
    assert [sorted(i for b, _ in e for i in b) for e in epochs] == [list(range(40))] * 3
    assert epochs[0][0][0] != epochs[1][0][0]  # reshuffled


@pytest.mark.slow  # starts the whole engine (accelerate): ~10 s alone, longer on a busy machine
def test_the_engine_logs_the_monitor_fields_with_every_step(tmp_path):
    from engine_tasks import WineTask
    from trainflow.training.engine import Trainer
    from trainflow.training.run_identity import RunIdentity
    from trainflow.training.training_log import read_step_log

    cfg = TrainConfig.model_validate({"max_steps": 3, "batch_size": 8, "device": "cpu", "logging": {"tensorboard": False},
                                      "schedule": {"name": "constant"}})
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    Trainer(WineTask(), cfg, tmp_path, 0, identity).fit()
    records = read_step_log(tmp_path)
    assert len(records) == 3
    for record in records:
        assert 0 <= record["data_wait_share"] <= 1 and record["data_batches_per_second"] > 0 and record["data_rss_mb"] > 0
