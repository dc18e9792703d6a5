"""The supervised cache: decoded once, sharded, compressed on request, keyed and reused, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from digits_artifact import write_digits_artifact, write_table_artifact  # noqa: E402
from trainflow.config import CacheConfig  # noqa: E402
from trainflow.data.cache import supervised_cache  # noqa: E402
from trainflow.data.cache.build_folder import PROGRESS_FILE  # noqa: E402
from trainflow.data.manifest import read_manifest  # noqa: E402
from trainflow.data.cache.supervised_cache import SupervisedCache, build_supervised_cache, read_cache_index  # noqa: E402
from trainflow.errors import UserFacingError  # noqa: E402

SMALL_SHARDS = CacheConfig(shard_records=8)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_artifact(tmp_path_factory.mktemp("ingest") / "dataset", count=100, size=16)


def cache_contents(cache_dir: Path) -> dict:
    """Everything a reader can see: per split every column and the record ids, plus info and stats."""
    index = read_cache_index(cache_dir)
    contents = {"info": index.info, "stats": index.stats}
    for split in ("train", "val", "test"):
        data = SupervisedCache(cache_dir, split)
        contents[split] = {name: data.arrays[name].numpy() for name in data.arrays}
        contents[split]["record_ids"] = data.record_ids
    return contents


def assert_same_contents(a: dict, b: dict) -> None:
    assert a["info"] == b["info"] and a["stats"] == b["stats"]
    for split in ("train", "val", "test"):
        assert a[split]["record_ids"] == b[split]["record_ids"]
        assert set(a[split]) == set(b[split])
        for name in a[split]:
            if name != "record_ids":
                np.testing.assert_array_equal(a[split][name], b[split][name])


def test_every_record_is_its_decoded_snapshot_and_stats_come_from_train_only(digits, tmp_path):
    facts = build_supervised_cache(digits, tmp_path / "cache", SMALL_SHARDS)
    assert (facts["num_train"], facts["num_val"], facts["num_test"]) == (60, 20, 20)
    assert facts["reused"] is False and len(facts["cache_key"]) == 64
    train = SupervisedCache(tmp_path / "cache", "train")
    entries = read_manifest(digits, "train")
    assert train.record_ids == [e.record_id for e in entries]
    for position in (0, 7, 8, 59):  # both sides of a shard boundary
        expected = np.asarray(Image.open(digits / entries[position].image).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(train.arrays["images"][position].numpy(), expected)
        assert int(train[position]["label"]) == entries[position].label
    pixels = train.arrays["images"].numpy().astype(np.float64) / 255
    stats = read_cache_index(tmp_path / "cache").stats
    np.testing.assert_allclose(stats["input_mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["input_std"], pixels.std(axis=(0, 2, 3)) + 1e-6, rtol=1e-9)
    assert stats["class_counts"] == np.bincount([e.label for e in entries], minlength=10).tolist()
    assert len(list((tmp_path / "cache" / "shards").glob("train-*.h5"))) == 8  # 60 records, 8 per shard


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_chunked_shards_hold_the_same_records(digits, tmp_path, compression):
    plain = cache_contents(Path(build_supervised_cache(digits, tmp_path / "plain", SMALL_SHARDS)["cache_location"]))
    packed_cfg = CacheConfig(shard_records=8, compression=compression, chunk_kib=2)
    packed_dir = Path(build_supervised_cache(digits, tmp_path / "packed", packed_cfg)["cache_location"])
    with h5py.File(packed_dir / "shards" / "train-00000.h5", "r") as handle:
        assert handle["images"].compression == compression
        assert handle["images"].chunks == (2, 3, 16, 16)  # whole records, about chunk_kib each
    assert_same_contents(plain, cache_contents(packed_dir))


def test_shards_are_cut_by_bytes_as_well_as_records(digits, tmp_path):
    record_bytes = 3 * 16 * 16 + 8  # image + label
    cfg = CacheConfig(shard_records=1000, shard_mb=(5 * record_bytes) / 2**20)
    build_supervised_cache(digits, tmp_path / "cache", cfg)
    counts = [records for _, records in json.loads(h5py.File(tmp_path / "cache" / "supervised.h5").attrs["shards"])["train"]]
    assert counts == [5] * 12


def test_a_second_run_with_the_same_inputs_reuses_the_keyed_cache(digits, tmp_path):
    root = tmp_path / "cache-root"
    first = build_supervised_cache(digits, tmp_path / "run1", CacheConfig(shard_records=8, cache_root=str(root)))
    shard = Path(first["cache_location"]) / "shards" / "train-00000.h5"
    written_at = shard.stat().st_mtime_ns
    second = build_supervised_cache(digits, tmp_path / "run2", CacheConfig(shard_records=8, cache_root=str(root)))
    assert second["reused"] is True and second["cache_key"] == first["cache_key"]
    assert second["cache_location"] == first["cache_location"] and shard.stat().st_mtime_ns == written_at
    assert not (tmp_path / "run2" / "shards").exists()  # the artifact holds the index; shards stay in the root
    assert_same_contents(cache_contents(tmp_path / "run1"), cache_contents(tmp_path / "run2"))
    changed = build_supervised_cache(digits, tmp_path / "run3", CacheConfig(shard_records=8, compression="lzf",
                                                                            cache_root=str(root)))
    assert changed["reused"] is False and changed["cache_key"] != first["cache_key"]
    assert len(list(root.iterdir())) == 2


def test_new_data_gets_a_new_key(tmp_path):
    small = write_digits_artifact(tmp_path / "small", count=50)
    grown = write_digits_artifact(tmp_path / "grown", count=55)
    keys = {build_supervised_cache(folder, tmp_path / f"cache-{folder.name}", CacheConfig(cache_root=str(tmp_path / "root")))["cache_key"]
            for folder in (small, grown)}
    assert len(keys) == 2


def test_a_build_killed_by_an_error_resumes_from_its_last_complete_shard(digits, tmp_path, monkeypatch):
    clean = cache_contents(Path(build_supervised_cache(digits, tmp_path / "clean", SMALL_SHARDS)["cache_location"]))
    written: list[str] = []
    original = supervised_cache.write_shard

    def failing_write(path, columns, settings):
        if len(written) == 3:
            raise OSError("disk went away (injected)")
        original(path, columns, settings)
        written.append(Path(path).name)

    monkeypatch.setattr(supervised_cache, "write_shard", failing_write)
    cfg = CacheConfig(shard_records=8, cache_root=str(tmp_path / "root"))
    with pytest.raises(OSError, match="injected"):
        build_supervised_cache(digits, tmp_path / "resumed", cfg)
    assert written == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]
    monkeypatch.setattr(supervised_cache, "write_shard", lambda *a: (written.append(Path(a[0]).name), original(*a)))
    facts = build_supervised_cache(digits, tmp_path / "resumed", cfg)
    assert facts["reused"] is False
    assert written[3:][0] == "train-00003.h5" and "train-00000.h5" not in written[3:]  # finished shards kept
    shards = sorted(path.name for path in (Path(facts["cache_location"]) / "shards").iterdir())
    assert sorted(written) == shards and len(shards) == 8 + 3 + 3  # every shard written exactly once overall
    assert_same_contents(clean, cache_contents(tmp_path / "resumed"))


KILLABLE_BUILD = """
import sys, time
from trainflow.config import CacheConfig
from trainflow.data.cache import supervised_cache
original = supervised_cache.write_shard
def slow_write(*args):
    original(*args)
    time.sleep(0.4)
supervised_cache.write_shard = slow_write
supervised_cache.build_supervised_cache(sys.argv[1], sys.argv[2], CacheConfig(shard_records=8, cache_root=sys.argv[3]))
"""


def test_a_build_killed_with_sigkill_resumes_and_equals_a_clean_build(digits, tmp_path):
    root = tmp_path / "root"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_BUILD, str(digits), str(tmp_path / "killed"), str(root)])
    deadline = time.time() + 120
    progress = None
    while time.time() < deadline and process.poll() is None:
        found = list(root.glob(f"*/{PROGRESS_FILE}"))
        if found and len(json.loads(found[0].read_text())["shards"]) >= 3:
            progress = found[0]
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert progress is not None, "the build must be killed mid-way"
    done_before = set(json.loads(progress.read_text())["shards"])
    assert 3 <= len(done_before) < 14
    mtimes = {name: (progress.parent / name).stat().st_mtime_ns for name in done_before}
    facts = build_supervised_cache(digits, tmp_path / "killed", CacheConfig(shard_records=8, cache_root=str(root)))
    assert {name: (progress.parent / name).stat().st_mtime_ns for name in done_before} == mtimes  # not rewritten
    assert facts["reused"] is False
    clean = build_supervised_cache(digits, tmp_path / "clean", SMALL_SHARDS)
    assert_same_contents(cache_contents(Path(clean["cache_location"])), cache_contents(tmp_path / "killed"))


def test_a_missing_cache_root_is_named(digits, tmp_path):
    root = tmp_path / "root"
    build_supervised_cache(digits, tmp_path / "cache", CacheConfig(cache_root=str(root)))
    root.rename(tmp_path / "elsewhere")
    with pytest.raises(UserFacingError, match=r"cache shard .*train-00000.h5 is missing .*cache_root"):
        SupervisedCache(tmp_path / "cache", "train")


def test_masks_and_tables_are_cached_with_their_statistics(tmp_path):
    segmentation = write_digits_artifact(tmp_path / "seg", count=40, task="segmentation")
    build_supervised_cache(segmentation, tmp_path / "seg-cache", SMALL_SHARDS)
    train = SupervisedCache(tmp_path / "seg-cache", "train")
    masks = train.arrays["masks"].numpy()
    np.testing.assert_array_equal(masks, (train.arrays["images"].numpy()[:, 0] > 100).astype(np.uint8))
    assert read_cache_index(tmp_path / "seg-cache").stats["class_counts"] == np.bincount(masks.ravel(), minlength=2).tolist()
    assert train[3]["mask"].dtype.is_floating_point is False

    table = write_table_artifact(tmp_path / "table")
    build_supervised_cache(table, tmp_path / "table-cache", SMALL_SHARDS)
    rows = SupervisedCache(tmp_path / "table-cache", "train")
    stats = read_cache_index(tmp_path / "table-cache").stats
    features, targets = rows.arrays["features"].numpy().astype(np.float64), rows.arrays["targets"].numpy().astype(np.float64)
    np.testing.assert_allclose(stats["input_mean"], features.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["target_mean"], targets.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["target_std"], targets.std(0) + 1e-6, rtol=1e-9)  # large offset, small spread
    assert rows[0]["inputs"].shape == (64,) and rows[0]["targets"].shape == (2,)


def test_an_empty_train_split_is_one_clear_error(tmp_path):
    folder = write_digits_artifact(tmp_path / "data", count=10)
    lines = [line for line in (folder / "manifest.jsonl").read_text().splitlines() if '"train"' not in line]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserFacingError, match="the train split is empty"):
        build_supervised_cache(folder, tmp_path / "cache")
