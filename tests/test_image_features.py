"""Streaming feature statistics: equal to np.cov, pytorch-fid's file set and loading, its .npz, and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as TF
from PIL import Image
from pytorch_fid.fid_score import compute_statistics_of_path

from trainflow.errors import UserFacingError
from trainflow.metrics.image_quality import quantise_like_png
from trainflow.metrics.feature_extractors import FeatureExtractor, resize_for_inception
from trainflow.metrics.image_features import (
    FeatureStatistics, GaussianStatistics, cached_folder_statistics, list_image_files, load_statistics,
    save_statistics, stream_folder_statistics,
)


def colour_statistics_extractor(prepare=lambda x: x) -> FeatureExtractor:
    """A cheap extractor (per-channel mean and std, and a corner pixel) so streaming is tested without InceptionV3."""
    def forward(x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :, 0, 0]], dim=1)

    forward.calls = 0

    def counted(x):
        forward.calls += 1
        return forward(x)

    extractor = FeatureExtractor("colour-stats", 9, prepare, counted, torch.device("cpu"), identity="colour-stats-v1")
    extractor.calls = lambda: forward.calls
    return extractor


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(23):
        mode = "L" if index % 5 == 0 else "RGB"  # pytorch-fid converts every image to RGB
        shape = (16, 16) if mode == "L" else (16, 16, 3)
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(folder / f"{index:03d}.png")
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(folder / "extra.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "nested" / "ignored.png")
    return folder


def test_running_sums_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(257, 40)) * rng.uniform(0.1, 5, size=40) + 1e3  # a large offset tests the shift
    stats = FeatureStatistics(40, keep_features=True)
    for chunk in np.array_split(features, [1, 50, 51, 200]):
        stats.update(torch.from_numpy(chunk))
    result = stats.statistics()
    np.testing.assert_allclose(result.mu, features.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(result.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    assert result.count == 257 and torch.equal(stats.features(), torch.from_numpy(features))


def test_one_sample_is_not_enough():
    stats = FeatureStatistics(3)
    stats.update(np.ones((1, 3)))
    with pytest.raises(UserFacingError, match="at least 2 images"):
        stats.statistics()


def test_lists_the_files_pytorch_fid_reads(image_folder):
    files = list_image_files(image_folder)
    assert [f.name for f in files] == sorted([f"{i:03d}.png" for i in range(23)] + ["extra.jpg"])


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no images in"),
    (lambda root: (root / "file.bin").write_bytes(b"x") and root / "file.bin", "neither a folder of images"),
])
def test_bad_folders_are_one_sentence(tmp_path, make, message):
    with pytest.raises(UserFacingError, match=message):
        list_image_files(make(tmp_path))


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_statistics_equal_pytorch_fid_loading(image_folder, workers):
    files = list_image_files(image_folder)
    extractor = colour_statistics_extractor()
    streamed = stream_folder_statistics(files, extractor, batch_size=5, num_workers=workers, keep_features=True)

    to_tensor = TF.ToTensor()  # pytorch-fid's transform
    direct = extractor.forward(torch.stack([to_tensor(Image.open(f).convert("RGB")) for f in files])).double()
    assert torch.equal(streamed.features(), direct)
    np.testing.assert_allclose(streamed.statistics().sigma, np.cov(direct.numpy(), rowvar=False), rtol=1e-10, atol=1e-14)


def test_images_of_different_sizes_share_a_batch_after_the_inception_resize(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for index, size in enumerate([(8, 8), (20, 12), (8, 8)]):
        Image.new("RGB", size, (index * 60, 10, 200)).save(folder / f"{index}.png")
    stats = stream_folder_statistics(list_image_files(folder), colour_statistics_extractor(resize_for_inception), batch_size=3, num_workers=0)
    assert stats.count == 3


def test_a_corrupt_image_names_the_file(image_folder):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserFacingError, match=r"broken\.png cannot be decoded"):
        stream_folder_statistics(list_image_files(image_folder), colour_statistics_extractor(), batch_size=4, num_workers=1)


def test_npz_round_trip_is_pytorch_fids_format(tmp_path):
    rng = np.random.default_rng(2)
    stats = GaussianStatistics(rng.normal(size=6), np.cov(rng.normal(size=(20, 6)), rowvar=False))
    save_statistics(tmp_path / "ref.npz", stats)
    loaded = load_statistics(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    mu, sigma = compute_statistics_of_path(str(tmp_path / "ref.npz"), None, 50, 6, "cpu")  # pytorch-fid's reader
    np.testing.assert_array_equal(mu, stats.mu)
    np.testing.assert_array_equal(sigma, stats.sigma)
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temporary file left behind


@pytest.mark.parametrize("write,message", [
    (lambda p: np.savez(p, mu=np.zeros(3)), "no sigma array"),
    (lambda p: np.savez(p, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1)), "not a readable numeric"),
    (lambda p: p.write_bytes(b"plain text"), "not a readable numeric"),
    (lambda p: np.savez(p, mu=np.zeros(3), sigma=np.eye(4)), "sigma must be"),
])
def test_bad_statistics_files_are_one_sentence(tmp_path, write, message):
    path = tmp_path / "stats.npz"
    write(path)
    with pytest.raises(UserFacingError, match=message):
        load_statistics(path)


def test_cache_reuses_statistics_until_an_image_changes(image_folder, tmp_path):
    extractor = colour_statistics_extractor()
    files = list_image_files(image_folder)
    first = cached_folder_statistics(files, extractor, tmp_path / "cache", batch_size=8, num_workers=0)
    calls = extractor.calls()
    again = cached_folder_statistics(files, extractor, tmp_path / "cache", batch_size=8, num_workers=0)
    assert extractor.calls() == calls and np.array_equal(first.sigma, again.sigma)
    assert len(list((tmp_path / "cache").glob("colour-stats-v1-*.npz"))) == 1

    Image.new("RGB", (16, 16), (255, 0, 0)).save(files[0])
    changed = cached_folder_statistics(files, extractor, tmp_path / "cache", batch_size=8, num_workers=0)
    assert extractor.calls() > calls and not np.array_equal(first.mu, changed.mu)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_quantising_matches_a_saved_png(tmp_path):
    images = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    array = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # how reports save samples
    Image.fromarray(array).save(tmp_path / "sample.png")
    reread = TF.ToTensor()(Image.open(tmp_path / "sample.png").convert("RGB"))
    assert torch.equal(quantise_like_png(images)[0], reread)


def test_feature_cache_reads_back_and_replaces_a_damaged_entry(tmp_path):
    from trainflow.metrics.image_features import cached_features

    extractor = colour_statistics_extractor()
    calls = []
    features = torch.arange(18, dtype=torch.float64).reshape(2, 9)
    compute = lambda: (calls.append(1), features)[1]  # noqa: E731
    assert torch.equal(cached_features("abc" * 11, extractor, tmp_path, compute), features) and len(calls) == 1
    assert torch.equal(cached_features("abc" * 11, extractor, tmp_path, compute), features) and len(calls) == 1
    (entry,) = tmp_path.glob("colour-stats-v1-*.safetensors")
    entry.write_bytes(b"not safetensors")
    assert torch.equal(cached_features("abc" * 11, extractor, tmp_path, compute), features) and len(calls) == 2
    assert torch.equal(cached_features("abd" * 11, extractor, tmp_path, compute), features) and len(calls) == 3  # new content, new key


def test_an_unwritable_cache_folder_is_one_sentence(tmp_path):
    from trainflow.metrics.image_features import cached_features

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserFacingError, match="cannot write the feature cache entry .*a-file.*writable cache folder"):
        cached_features("abc" * 11, colour_statistics_extractor(), blocker / "cache",
                        lambda: torch.zeros(2, 9, dtype=torch.float64))
