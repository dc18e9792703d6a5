"""Every loading mode serves the same records as eager; streaming covers each record once across workers and ranks."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))

from digits_artifact import write_digits_artifact  # noqa: E402
from trainflow.config import CacheConfig  # noqa: E402
from trainflow.config.data_loading import DataLoadingConfig  # noqa: E402
from trainflow.data.loading.batch_collate import collate_records  # noqa: E402
from trainflow.data.loading.modes import EagerRecords, LruRecords, MemmapRecords, ShardRecords  # noqa: E402
from trainflow.data.cache.supervised_cache import SupervisedCache, build_supervised_cache, open_stream, read_cache_index  # noqa: E402
from trainflow.errors import ConfigError, UserFacingError  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One segmentation dataset (images + masks + labels) cached chunked+compressed and contiguous."""
    folder = tmp_path_factory.mktemp("modes")
    dataset = write_digits_artifact(folder / "dataset", count=90, size=16, task="segmentation")
    chunked = build_supervised_cache(dataset, folder / "chunked", CacheConfig(shard_records=10, compression="lzf"))
    contiguous = build_supervised_cache(dataset, folder / "contiguous", CacheConfig(shard_records=10, layout="contiguous"))
    return {"dataset": dataset, "chunked": Path(chunked["cache_location"]), "contiguous": Path(contiguous["cache_location"])}


def all_records(dataset, order) -> dict[str, torch.Tensor]:
    """Read `order` in batches of 7 through __getitems__, then put rows back in index order."""
    batches = [collate_records(dataset.__getitems__(list(order[i: i + 7]))) for i in range(0, len(order), 7)]
    merged = {name: torch.cat([b[name] for b in batches]) for name in batches[0]}
    position = torch.argsort(merged["index"])
    return {name: value[position] for name, value in merged.items()}


def assert_same_batches(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("mode, cache", [("lazy", "chunked"), ("cached", "chunked"), ("memmap", "contiguous"),
                                         ("memmap", "chunked"), ("eager", "contiguous")])
def test_each_mode_serves_exactly_what_eager_serves(built, mode, cache):
    eager = SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="eager"))
    other = SupervisedCache(built[cache], "train", loading=DataLoadingConfig(mode=mode, lru_budget_mb=0.01))
    order = np.random.default_rng(0).permutation(len(eager))
    assert len(other) == len(eager) == 54
    assert_same_batches(all_records(eager, order), all_records(other, order[::-1]))
    assert torch.equal(other.arrays["labels"], eager.arrays["labels"])
    one = other[5]
    assert one["inputs"].shape == (3, 16, 16) and torch.equal(one["mask"], eager[5]["mask"])


def test_modes_pick_the_matching_record_source(built):
    def source(cache, **loading):
        return type(SupervisedCache(built[cache], "train", loading=DataLoadingConfig(**loading)).records)

    assert source("chunked") is EagerRecords  # auto, and the split fits in eager_max_mb
    assert source("contiguous", eager_max_mb=0.001) is MemmapRecords  # auto, too large, mappable
    assert source("chunked", eager_max_mb=0.001) is LruRecords  # auto, too large, compressed
    assert source("chunked", mode="memmap") is ShardRecords  # h5py with its chunk cache off
    assert SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="memmap")).records.reader.rdcc_nbytes == 0


def test_the_lru_stays_under_its_byte_budget(built):
    record_bytes = 3 * 16 * 16 + 16 * 16 + 8  # image, mask, label
    source = LruRecords(ShardRecords(read_cache_index(built["chunked"]).table("train")), budget_bytes=10 * record_bytes)
    for start in range(0, 54, 6):
        rows = source.rows(np.arange(start, start + 6))
        assert source.bytes_held <= 10 * record_bytes and len(rows["images"]) == 6
    assert sorted(source._records) == list(range(44, 54))  # the ten most recently used


def test_workers_open_their_own_files_and_agree_with_the_main_process(built):
    dataset = SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="cached"))
    dataset[0]  # the main process opens its files first; forked workers must not reuse those handles
    loader = DataLoader(dataset, batch_size=9, num_workers=2, collate_fn=collate_records)
    from_workers = {name: torch.cat([batch[name] for batch in loader]) for name in ("index", "inputs", "mask")}
    eager = SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="eager"))
    expected = all_records(eager, np.arange(len(eager)))
    for name in from_workers:
        assert torch.equal(from_workers[name], expected[name])


def test_streaming_covers_every_record_once_across_two_workers_and_two_ranks(built):
    seen: Counter = Counter()
    values: dict[int, torch.Tensor] = {}
    for rank in (0, 1):
        stream = open_stream(built["chunked"], "train", batch_size=4, shuffle=True, seed=3, rank=rank, world_size=2,
                             loading=DataLoadingConfig(stream_block_records=5))
        stream.set_epoch(1)
        for batch in DataLoader(stream, batch_size=None, num_workers=2):
            seen.update(batch["index"].tolist())
            values.update({int(i): image for i, image in zip(batch["index"], batch["inputs"])})
    assert sorted(seen) == list(range(54)) and set(seen.values()) == {1}
    eager = SupervisedCache(built["chunked"], "train")
    assert all(torch.equal(values[i], eager[i]["inputs"]) for i in range(54))


def test_streaming_reshuffles_per_epoch_and_reads_one_block_at_a_time(built):
    stream = open_stream(built["chunked"], "train", batch_size=54, shuffle=True, seed=0,
                         loading=DataLoadingConfig(stream_block_records=5))
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        orders.append(torch.cat([b["index"] for b in stream]).tolist())
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(54)) and orders[0] != orders[1]
    assert max(stop - start for start, stop in stream.blocks()) == 5
    assert all(start // 10 == (stop - 1) // 10 for start, stop in stream.blocks())  # never across a shard


def test_streaming_is_refused_for_training_and_lazy_needs_the_snapshots(built, tmp_path):
    with pytest.raises(ConfigError, match="streaming .* cannot resume"):
        SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="streaming"))
    with pytest.raises(UserFacingError, match="mode lazy decodes the ingest snapshots"):
        SupervisedCache(built["chunked"], "train", loading=DataLoadingConfig(mode="lazy"), dataset_dir=tmp_path / "gone")
