"""Transforms per split: train augments (keyed by seed, epoch and record), val/test only resize; masks follow images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from digits_artifact import write_digits_artifact  # noqa: E402
from trainflow.config import CacheConfig  # noqa: E402
from trainflow.config.data_loading import TransformsConfig  # noqa: E402
from trainflow.data.cache.supervised_cache import SupervisedCache, build_supervised_cache  # noqa: E402
from trainflow.data.loading.transforms import SampleKey, build_image_transform, check_transforms  # noqa: E402
from trainflow.errors import ConfigError, UserFacingError  # noqa: E402
from trainflow.training.batch_plan import EpochPlan  # noqa: E402
from trainflow.training.distributed import ProcessInfo  # noqa: E402

FLIPS = TransformsConfig(augment=[{"name": "HorizontalFlip", "params": {"p": 0.5}},
                                  {"name": "VerticalFlip", "params": {"p": 0.5}}])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("transforms")
    dataset = write_digits_artifact(folder / "dataset", count=100, size=16, task="segmentation")
    return Path(build_supervised_cache(dataset, folder / "cache", CacheConfig())["cache_location"])


def flips_of(image: torch.Tensor, original: torch.Tensor) -> tuple[bool, bool]:
    for horizontal in (False, True):
        for vertical in (False, True):
            candidate = original
            candidate = candidate.flip(-1) if horizontal else candidate
            candidate = candidate.flip(-2) if vertical else candidate
            if torch.equal(candidate, image):
                return horizontal, vertical
    raise AssertionError("not a flip of the original")


def test_a_records_augmentation_depends_only_on_seed_epoch_and_index(cache):
    plain = SupervisedCache(cache, "train")
    augmented = SupervisedCache(cache, "train", transforms=FLIPS)
    assert augmented.takes_sample_keys and not plain.takes_sample_keys
    draws = [flips_of(augmented[SampleKey(i, 0, 7)]["inputs"], plain[i]["inputs"]) for i in range(60)]
    again = [flips_of(augmented[SampleKey(i, 0, 7)]["inputs"], plain[i]["inputs"]) for i in reversed(range(60))]
    assert draws == list(reversed(again))  # order of access does not matter
    next_epoch = [flips_of(augmented[SampleKey(i, 1, 7)]["inputs"], plain[i]["inputs"]) for i in range(60)]
    assert draws != next_epoch
    horizontal = sum(h for h, _ in draws)
    assert 15 <= horizontal <= 45  # p = 0.5 over 60 records
    # Each step has its own seed: albumentations' Compose alone would flip both ways together, always.
    assert any(h != v for h, v in draws)


def test_masks_move_with_their_images(cache):
    rotations = TransformsConfig(augment=[{"name": "RandomRotate90", "params": {"p": 1.0}},
                                          {"name": "HorizontalFlip", "params": {"p": 0.5}},
                                          {"name": "Affine", "params": {"translate_px": 3, "p": 1.0}}])
    data = SupervisedCache(cache, "train", transforms=rotations)
    for index in range(20):
        item = data[SampleKey(index, 2, 0)]
        stroke = (item["inputs"][0] * 255).round() > 100
        assert torch.equal(item["mask"].bool(), stroke)  # the mask is still the image's stroke, pixel for pixel


def test_val_and_test_are_only_resized_and_train_is_resized_too(cache):
    cfg = TransformsConfig(resize=24, augment=FLIPS.augment)
    val = SupervisedCache(cache, "val", transforms=cfg)
    assert not val.takes_sample_keys
    first, again = val[0], val[0]
    assert first["inputs"].shape == (3, 24, 24) and first["mask"].shape == (24, 24)
    assert torch.equal(first["inputs"], again["inputs"])
    assert SupervisedCache(cache, "train", transforms=cfg)[SampleKey(0, 0, 0)]["inputs"].shape == (3, 24, 24)
    assert build_image_transform(TransformsConfig(resize=16), "val", 16) is None  # already that size


def test_wrong_transform_names_and_arguments_are_named(cache):
    with pytest.raises(ConfigError, match=r"augment\[0\]\.name: 'HorizontalFlips' is not .* did you mean 'HorizontalFlip'"):
        check_transforms(TransformsConfig(augment=[{"name": "HorizontalFlips"}]))
    with pytest.raises(ConfigError, match=r"augment\[1\]\.params: Affine does not accept"):
        check_transforms(TransformsConfig(augment=[{"name": "HorizontalFlip"}, {"name": "Affine", "params": {"shear_everything": 3}}]))
    crops = TransformsConfig(augment=[{"name": "RandomCrop", "params": {"height": 8, "width": 8, "p": 0.5}}])
    with pytest.raises(UserFacingError, match="different sizes"):
        SupervisedCache(cache, "train", transforms=crops).__getitems__([SampleKey(i, 0, 0) for i in range(16)])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_plan_resumed_mid_epoch_augments_the_rest_exactly_as_the_full_epoch(cache, workers):
    data = SupervisedCache(cache, "train", transforms=FLIPS)
    single = ProcessInfo(rank=0, local_rank=0, world_size=1)
    full = EpochPlan(data, single, seed=11, records_per_step=12)
    whole_epoch = list(full.loader(1, 0, 6, workers, pin_memory=False))
    resumed = EpochPlan(data, single, seed=11, records_per_step=12)  # a fresh process
    tail = list(resumed.loader(1, 24, 4, workers, pin_memory=False))  # 24 records in, smaller micro-batch
    expected = torch.cat([b["inputs"] for b in whole_epoch])[24:]
    assert torch.equal(torch.cat([b["inputs"] for b in tail]), expected)
    assert torch.equal(torch.cat([b["mask"] for b in tail]), torch.cat([b["mask"] for b in whole_epoch])[24:])
