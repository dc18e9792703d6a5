"""The text-to-image latent cache: keyed and reused under cache.cache_root, resumable shard by shard after a kill."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from trainflow.artifacts import LocalArtifact
from trainflow.data.cache import latent_cache_build
from trainflow.data.cache.latent_cache import CACHE_FILE, CachedLatents
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split

# 40 records: train 28, val 6, test 6; shards of 8 give train 4 shards, val 1, test 1
CACHE = {"batch_size": 4, "storage_dtype": "float32", "shard_records": 8}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, digits_dir) -> Path:
    tmp = tmp_path_factory.mktemp("latent-dataset")
    out, report = LocalArtifact(str(tmp / "dataset")), LocalArtifact(str(tmp / "report"))
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 40}, 0, out, report, task="text_to_image")
    return Path(out.path)


def contents(cache_dir: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(Path(cache_dir) / CACHE_FILE, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def build(dataset: Path, base: Path, out: Path, **cache) -> dict:
    return build_cache(str(dataset), {"base": str(base)}, {**CACHE, **cache}, LocalArtifact(str(out)), task="text_to_image")


@pytest.fixture(scope="module")
def clean(dataset, tiny_base_model, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("clean") / "cache"
    facts = build(dataset, tiny_base_model, out)
    assert facts["reused"] is False and facts["num_train"] == 28
    return contents(out)


def test_the_cache_is_reused_by_key_without_loading_an_encoder(dataset, tiny_base_model, clean, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    first = build(dataset, tiny_base_model, tmp_path / "run1", cache_root=root)
    assert first["reused"] is False
    assert_same(clean, contents(tmp_path / "run1"))

    def no_encoders(*_args, **_kwargs):
        raise AssertionError("a reused cache must not load the encoders")

    monkeypatch.setattr(latent_cache_build, "load_pipeline_parts", no_encoders)
    second = build(dataset, tiny_base_model, tmp_path / "run2", cache_root=root)
    assert second["reused"] is True and second["cache_key"] == first["cache_key"]
    assert_same(clean, contents(tmp_path / "run2"))
    assert [p.name for p in Path(second["cache_location"]).glob("*.h5")] == [CACHE_FILE]  # shards gone once assembled
    assert len(CachedLatents(tmp_path / "run2", "train")) == 28


def test_changed_encoder_weights_or_dtype_get_a_new_key(dataset, tiny_base_model, tmp_path):
    root = str(tmp_path / "root")
    first = build(dataset, tiny_base_model, tmp_path / "a", cache_root=root)
    assert build(dataset, tiny_base_model, tmp_path / "b", cache_root=root, storage_dtype="float16")["cache_key"] != first["cache_key"]
    changed = tmp_path / "changed-base"
    shutil.copytree(tiny_base_model, changed)
    config = changed / "vae" / "config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "retrained",', 1))
    assert latent_cache_build.encoders_sha256(changed) != latent_cache_build.encoders_sha256(Path(tiny_base_model))


def test_a_killed_build_resumes_from_its_finished_shards_and_equals_a_clean_one(dataset, tiny_base_model, clean, tmp_path, monkeypatch):
    written: list[str] = []
    original = latent_cache_build._write_shard

    def failing(path, *arrays):
        if len(written) == 2:
            raise OSError("node preempted (injected)")
        original(path, *arrays)
        written.append(Path(path).name)

    monkeypatch.setattr(latent_cache_build, "_write_shard", failing)
    out = tmp_path / "cache"
    with pytest.raises(OSError, match="injected"):
        build(dataset, tiny_base_model, out)
    assert written == ["train-00000.h5", "train-00001.h5"] and not out.exists()

    monkeypatch.setattr(latent_cache_build, "_write_shard", lambda *a: (written.append(Path(a[0]).name), original(*a)))
    facts = build(dataset, tiny_base_model, out)  # a retry into the same output: the hidden build folder resumes
    assert written[2:] == ["train-00002.h5", "train-00003.h5", "val-00000.h5", "test-00000.h5"]
    assert facts["reused"] is False and facts["num_test"] == 6
    assert_same(clean, contents(out))
    assert not list(out.parent.glob(".cache.build-*"))  # the build folder became the output


def test_flipped_latents_are_the_mirrored_images_encoded_and_half_of_each_epoch_uses_them(dataset, tiny_base_model, clean, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from trainflow.data.manifest import read_manifest
    from trainflow.data.loading.transforms import SampleKey
    from trainflow.training.batch_plan import EpochPlan
    from trainflow.training.distributed import ProcessInfo

    build(dataset, tiny_base_model, tmp_path / "flip", flip_latents=True)
    arrays = contents(tmp_path / "flip")
    assert "train/latent_moments_flipped" in arrays and "val/latent_moments_flipped" not in arrays
    np.testing.assert_array_equal(arrays["train/latent_moments"], clean["train/latent_moments"])  # unchanged beside it
    # the mirrored image through the same VAE, in the cache's batches of 4
    vae = AutoencoderKL.from_pretrained(Path(tiny_base_model) / "vae").eval()
    first = read_manifest(dataset, "train")[:4]
    pixels = latent_cache_build.load_images(dataset, [e.image for e in first])
    with torch.no_grad():
        expected = vae.encode(torch.flip(pixels, dims=[3])).latent_dist.parameters.numpy()
    np.testing.assert_allclose(arrays["train/latent_moments_flipped"][:4], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(arrays["train/latent_moments_flipped"][:4], arrays["train/latent_moments"][:4], atol=1e-3)

    train = CachedLatents(tmp_path / "flip", "train")
    assert train.takes_sample_keys and not CachedLatents(tmp_path / "flip", "val").takes_sample_keys
    picks = {epoch: [train.mirrored(SampleKey(i, epoch, 0)) for i in range(len(train))] for epoch in range(4)}
    assert all(8 <= sum(p) <= 20 for p in picks.values())  # about half of 28 each epoch
    assert picks[0] != picks[1] and picks[0] == [train.mirrored(SampleKey(i, 0, 0)) for i in range(len(train))]
    mirrored_index = picks[0].index(True)
    item = train[SampleKey(mirrored_index, 0, 0)]
    assert item["index"].item() == mirrored_index
    assert torch.equal(item["moments"], torch.from_numpy(arrays["train/latent_moments_flipped"][mirrored_index]))
    assert torch.equal(train[mirrored_index]["moments"], torch.from_numpy(arrays["train/latent_moments"][mirrored_index]))
    # through the engine's own epoch loader: the records it draws in epoch 2 are mirrored as their keys say
    plan = EpochPlan(train, ProcessInfo(), seed=0, records_per_step=4)
    batch = next(iter(plan.loader(2, 0, 4, 0, False)))
    for index, moments in zip(batch["index"].tolist(), batch["moments"]):
        source = "train/latent_moments_flipped" if train.mirrored(SampleKey(index, 2, 0)) else "train/latent_moments"
        assert torch.equal(moments, torch.from_numpy(arrays[source][index]))
