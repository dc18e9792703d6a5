"""Aspect-ratio buckets: the bucket list, ingest into buckets (report, manifest), the bucketed latent cache,
batches that never mix buckets, and training, validation and test on a bucketed cache (SD and SDXL).

Engine-level guarantees under buckets (bit-for-bit resume after SIGKILL, 2-rank DDP coverage) are in
tests/test_engine_resume.py and tests/test_engine_ddp.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainflow.artifacts import LocalArtifact
from trainflow.data.manifest import read_dataset_info, read_manifest
from trainflow.diffusion.buckets import bucket_sizes, nearest_bucket, outside_range, ratio_in_range
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.errors import ConfigError
from trainflow.stages.build_cache import build_cache
from trainflow.stages.evaluate import evaluate
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.training.batch_plan import EpochPlan, validation_loader
from trainflow.training.bucketed_batches import bucketed_epoch_order
from trainflow.training.distributed import ProcessInfo

BUCKETS = {"resolution": 32, "step": 8}  # (24, 40), (32, 32), (40, 24) for the 32-pixel digits
INGEST = {"resolution": 32, "label_column": "label", "max_records": 60, "buckets": BUCKETS}


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ================================================================ the bucket list


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 512).map(lambda n: 8 * n), height=st.integers(1, 512).map(lambda n: 8 * n))
def test_a_bucket_exactly_at_the_ratio_limits_is_kept_whatever_the_rounding(width, height):
    # 1 / (h / w) is one rounding away from w / h for about one pair in ten: written as a reciprocal (or a
    # rounded decimal), a limit equal to a bucket's ratio must keep that bucket, at either end of the range.
    limit = 1 / (height / width)
    assert ratio_in_range(width, height, limit, math.inf) and ratio_in_range(width, height, 0.0, limit)
    assert not outside_range(width, height, limit, limit)
    sizes = bucket_sizes(max(width, height), 8, limit, limit)
    assert all(ratio_in_range(w, h, limit, limit) for w, h in sizes)
    assert not ratio_in_range(width, height, limit * (1 + 1e-6), limit * 2)  # a real gap still excludes it


def test_a_bucket_at_a_reciprocal_limit_is_listed():
    high = 1 / (368 / 392)  # 1.0652173913043477, one ulp below 392 / 368: an exact comparison drops the bucket
    assert high < 392 / 368
    assert bucket_sizes(380, 8, 1.0, high)[-1] == (392, 368)


@settings(max_examples=60, deadline=None)
@given(resolution=st.integers(16, 2048), step=st.sampled_from([8, 16, 32, 64]),
       low=st.floats(0.2, 1.0), high=st.floats(1.0, 5.0))
def test_every_bucket_fits_the_budget_the_step_and_the_ratio_range(resolution, step, low, high):
    sizes = bucket_sizes(resolution, step, low, high)
    for width, height in sizes:
        assert width % step == 0 and height % step == 0 and width * height <= resolution * resolution
        assert low * (1 - 1e-9) <= width / height <= high * (1 + 1e-9)
        # as large as the step allows: one more step on either side leaves the budget or the ratio range
        for wider, taller in ((width + step, height), (width, height + step)):
            assert wider * taller > resolution**2 or not low <= wider / taller <= high
    if 1 / high >= low - 1e-12 and 1 / low <= high + 1e-12:  # a range symmetric around 1 gives mirrored buckets
        assert {(h, w) for w, h in sizes} <= set(sizes) or not sizes


def test_sdxl_budget_gives_the_familiar_buckets_and_images_go_to_the_nearest_ratio():
    sizes = bucket_sizes(1024, 64, 0.5, 2.0)
    assert {(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (1344, 768), (1408, 704)} <= set(sizes)
    assert nearest_bucket(1920, 1080, sizes) == (1344, 768)  # 16:9 -> 1.75
    assert nearest_bucket(3000, 1000, sizes) == (1408, 704)  # 3:1 is beyond the range: the widest bucket
    assert nearest_bucket(500, 500, sizes) == (1024, 1024)


@pytest.mark.parametrize("buckets, field", [({"resolution": 32, "step": 64}, "step 64"),
                                            ({"step": 64, "min_aspect_ratio": 1.3, "max_aspect_ratio": 1.3}, "1.3")])
def test_settings_that_leave_images_without_a_bucket_are_one_sentence_before_anything_runs(buckets, field, digits_dir,
                                                                                            tmp_path):
    with pytest.raises(ConfigError) as error:
        ingest_split({"dataset_dir": str(digits_dir), "resolution": 512, "buckets": buckets}, 0,
                     LocalArtifact(str(tmp_path / "dataset")), LocalArtifact(str(tmp_path / "report.md")), task="text_to_image")
    message = str(error.value)
    assert "buckets: no bucket of about" in message and field in message and "no image would have a bucket" in message
    assert "\n" not in message and not (tmp_path / "dataset").exists()


def test_buckets_are_for_text_to_image_only(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.buckets: applies to text_to_image only, not classification"):
        ingest_split({"dataset_dir": str(digits_dir), "label_column": "label", "buckets": {}}, 0,
                     LocalArtifact(str(tmp_path / "d")), LocalArtifact(str(tmp_path / "r")), task="classification")


# ================================================================ ingest into buckets

@pytest.fixture(scope="module")
def mixed_digits(tmp_path_factory) -> Path:
    from trainflow.demo.digits_dataset import write_mixed_aspect_digits

    folder = tmp_path_factory.mktemp("mixed") / "digits-mixed"
    write_mixed_aspect_digits(folder)
    return folder


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory, mixed_digits) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bucketed")
    dataset, report = LocalArtifact(str(tmp / "dataset")), LocalArtifact(str(tmp / "report.md"))
    summary = ingest_split({"dataset_dir": str(mixed_digits), **INGEST}, 0, dataset, report, task="text_to_image")
    assert summary["num_buckets"] == 3
    return {"dataset": Path(dataset.path), "report": Path(report.path), "tmp": tmp}


def test_ingest_puts_each_image_in_its_nearest_bucket_and_records_size_and_crop(bucketed, mixed_digits):
    entries = read_manifest(bucketed["dataset"])
    counts: dict[tuple[int, int], int] = {}
    for entry in entries:
        with Image.open(bucketed["dataset"] / entry.image) as snapshot, Image.open(mixed_digits / entry.record_id) as original:
            size = snapshot.size
            assert size == nearest_bucket(*original.size, [(24, 40), (32, 32), (40, 24)])
            if original.size == (32, 32):
                assert entry.original_size is None and entry.crop_top_left is None, "nothing done, nothing recorded"
            else:
                # 48x32 covers 40x24 at scale 5/6: 40x27, 3 rows cropped (1 above); portrait the same way round
                assert entry.original_size == (original.height, original.width)
                assert entry.crop_top_left == ((1, 0) if original.width > original.height else (0, 1))
        counts[size] = counts.get(size, 0) + 1
    assert set(counts) == {(24, 40), (32, 32), (40, 24)}
    report = bucketed["report"].read_text()
    assert "## Aspect-ratio buckets" in report and "| bucket (width × height) |" in report
    for (width, height), count in counts.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {width} × {height} |"))
        assert sum(int(cell) for cell in row.strip("|").split("|")[2:]) == count
    assert read_dataset_info(bucketed["dataset"])["buckets"] == [[24, 40], [32, 32], [40, 24]]


def test_square_ingest_writes_the_manifest_it_always_wrote(digits_dir, tmp_path):
    dataset = LocalArtifact(str(tmp_path / "dataset"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 20}, 0,
                 dataset, LocalArtifact(str(tmp_path / "report.md")), task="text_to_image")
    lines = [json.loads(line) for line in (Path(dataset.path) / "manifest.jsonl").read_text().splitlines()]
    assert all(set(line) == {"id", "split", "sha256", "image", "caption", "label"} for line in lines)
    assert "buckets" not in read_dataset_info(dataset.path)


# ================================================================ the bucketed cache and its batches

@pytest.fixture(scope="module")
def bucketed_cache(bucketed, tiny_base_model) -> Path:
    cache = LocalArtifact(str(bucketed["tmp"] / "cache"))
    build_cache(str(bucketed["dataset"]), {"base": str(tiny_base_model)},
                {"batch_size": 16, "storage_dtype": "float32", "shard_records": 16}, cache, task="text_to_image")
    return Path(cache.path)


def test_the_cache_keeps_each_size_as_a_bucket_with_each_records_own_latents(bucketed, bucketed_cache, tiny_base_model):
    from diffusers import AutoencoderKL

    from trainflow.data.cache.latent_cache_build import load_images

    vae = AutoencoderKL.from_pretrained(tiny_base_model / "vae").eval()
    entries = read_manifest(bucketed["dataset"], "train")
    train_set = CachedLatents(bucketed_cache, "train")
    assert len(train_set) == len(entries) and train_set.bucket_sizes == [(24, 40), (32, 32), (40, 24)]  # (h, w)
    for index in (0, 1, 2, len(entries) - 1):
        pixels = load_images(bucketed["dataset"], [entries[index].image])
        with torch.no_grad():
            expected = vae.encode(pixels).latent_dist.parameters[0]
        item = train_set[index]
        assert item["moments"].shape[1:] == (pixels.shape[2] // 4, pixels.shape[3] // 4)
        torch.testing.assert_close(item["moments"], expected, rtol=1e-4, atol=1e-5)
        assert train_set.bucket_sizes[train_set.bucket_ids[index]] == tuple(pixels.shape[2:])
    with h5py.File(bucketed_cache / "latents.h5") as handle:
        assert "latent_moments" not in handle["train"] and len(handle["train"]["buckets"]) == 3


def test_every_step_comes_from_one_bucket_and_the_order_is_a_function_of_seed_and_epoch(bucketed_cache):
    train_set = CachedLatents(bucketed_cache, "train")
    plan = EpochPlan(train_set, ProcessInfo(), seed=0, records_per_step=4)
    assert plan.steps_per_epoch() == sum(int((train_set.bucket_ids == b).sum()) // 4 for b in range(3))
    for epoch in (0, 1):
        for batch in plan.loader(epoch, 0, 2, 0, False):  # micro-batches of 2 inside steps of 4
            shapes = {tuple(m.shape) for m in batch["moments"]}
            assert len(shapes) == 1 and len({int(train_set.bucket_ids[i]) for i in batch["index"]}) == 1
    assert plan.indices(3) == plan.indices(3) != plan.indices(4)
    resumed = plan.loader(1, 8, 4, 0, False)  # 8 records into epoch 1: the same batches the full epoch has from there
    assert [b["index"].tolist() for b in resumed] == [b["index"].tolist() for b in plan.loader(1, 0, 4, 0, False)][2:]
    ranks = [bucketed_epoch_order(train_set.bucket_ids, 0, 2, rank, 2, 4) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and not set(ranks[0]) & set(ranks[1])


def test_validation_loss_of_a_bucketed_cache_does_not_depend_on_the_batch_size(bucketed_cache, tiny_base_model):
    from trainflow.config import DiffusionTrainingConfig
    from trainflow.tasks.text_to_image_training import TextToImageTask

    task = TextToImageTask(tiny_base_model, bucketed_cache, DiffusionTrainingConfig(), seed=0)
    model = task.build_model().eval()
    totals = []
    for size in (1, 3, 64):
        total: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for batch in validation_loader(task.val_dataset(), ProcessInfo(), size, num_workers=0, pin_memory=False):
                assert len({tuple(m.shape) for m in batch["moments"]}) == 1
                for name, value in task.validation_step(model, batch).items():
                    total[name] = total.get(name, 0) + value.double()
        totals.append(task.finalize_validation(total)["loss"])
    assert totals[0] == pytest.approx(totals[1], rel=1e-6) and totals[0] == pytest.approx(totals[2], rel=1e-6)


def test_training_on_buckets_runs_validates_and_scores_the_test_split(bucketed_cache, tiny_base_model, tmp_path):
    model, metrics = LocalArtifact(str(tmp_path / "model")), LocalArtifact(str(tmp_path / "metrics"))
    train("text_to_image", str(bucketed_cache), {"base": str(tiny_base_model)},
          {"max_epochs": 2, "batch_size": 4, "device": "cpu", "mixed_precision": "no", "schedule": {"name": "constant"},
           "logging": {"tensorboard": False}}, 0, model, metrics, checkpoint_dir=str(tmp_path / "checkpoints"))
    record = json.loads((Path(model.path) / "trainflow_training.json").read_text())
    assert record["steps_run"] > 0 and all(math.isfinite(h["val_loss"]) for h in record["history"])
    results = [evaluate(str(bucketed_cache), model.path, {"base": str(tiny_base_model)},
                        {"batch_size": size, "device": "cpu", "bootstrap_resamples": 0}, 0,
                        LocalArtifact(str(tmp_path / f"eval{size}")), task="text_to_image") for size in (1, 32)]
    assert results[0]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-6)


def test_sample_grids_of_a_bucketed_cache_draw_each_record_at_its_size(bucketed_cache, tiny_base_model):
    from trainflow.config import DiffusionTrainingConfig
    from trainflow.tasks.text_to_image_training import TextToImageTask

    task = TextToImageTask(tiny_base_model, bucketed_cache, DiffusionTrainingConfig(), seed=0)
    val = task.val_dataset()
    sizes = [val.bucket_sizes[val.bucket_ids[i]] for i in range(6)]
    assert len(set(sizes)) > 1, "the first val records span several buckets"
    images = task.validation_images(task.build_model().eval(), 6)
    assert images.shape == (6, 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for image, (height, width) in zip(images, sizes):
        top, left = (images.shape[2] - height) // 2, (images.shape[3] - width) // 2
        inside = image[:, top:top + height, left:left + width]
        assert float(inside.std()) > 0 and float(image.sum()) == pytest.approx(float(inside.sum())), "letterboxed"


# ================================================================ SDXL time ids from the recorded size and crop

def test_sdxl_time_ids_carry_each_images_original_size_and_crop(bucketed, tiny_sdxl_model, tmp_path):
    cache = LocalArtifact(str(tmp_path / "sdxl-cache"))
    build_cache(str(bucketed["dataset"]), {"base": str(tiny_sdxl_model)}, {"batch_size": 16, "storage_dtype": "float32"},
                cache, task="text_to_image")
    records = CachedLatents(cache.path, "train")
    for index, entry in enumerate(read_manifest(bucketed["dataset"], "train")):
        with Image.open(bucketed["dataset"] / entry.image) as snapshot:
            target = (snapshot.height, snapshot.width)
        expected = [*(entry.original_size or target), *(entry.crop_top_left or (0, 0)), *target]
        assert records[index]["time_ids"].tolist() == expected
    assert any(records[i]["time_ids"][2:4].tolist() != [0, 0] for i in range(len(records))), "some images were cropped"
