"""Masked loss: a per-image mask (alpha channel or a mask column) weighs the denoising loss in latent space.

The loss itself (all ones = unmasked; a zero hides a latent completely), the masks ingest and the cache make
from alpha channels (area-averaged to the latent grid, mirrored with their latents), a wrong-size mask as a
quarantine reason, and the training and validation steps that use them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import default_collate

from trainflow.artifacts import LocalArtifact
from trainflow.config import DiffusionTrainingConfig
from trainflow.data.manifest import read_manifest
from trainflow.data.loading.transforms import SampleKey
from trainflow.diffusion.denoising_loss import per_record_loss
from trainflow.data.cache.latent_cache import CachedLatents
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split
from trainflow.tasks.text_to_image_training import TextToImageTask

SCHEDULER = DDPMScheduler(num_train_timesteps=1000)


def tensors(seed: int, shape=(3, 4, 6, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


# ================================================================ the loss

@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_a_mask_of_ones_is_exactly_the_unmasked_loss(snr_gamma):
    prediction, target = tensors(0)
    timesteps = torch.tensor([3, 400, 999])
    plain = per_record_loss(prediction, target, SCHEDULER, timesteps, snr_gamma)
    ones = per_record_loss(prediction, target, SCHEDULER, timesteps, snr_gamma, torch.ones(3, 1, 6, 8))
    assert torch.equal(plain, ones)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), keep=st.floats(0.05, 0.95))
def test_latents_under_a_zero_mask_change_neither_the_loss_nor_its_gradient(seed, keep):
    prediction, target = tensors(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    mask = (torch.rand(3, 1, 6, 8, generator=generator) < keep).float()
    hidden = (mask == 0).expand_as(prediction)
    other_prediction = torch.where(hidden, torch.randn(prediction.shape, generator=generator) * 100, prediction)
    other_target = torch.where(hidden, torch.randn(target.shape, generator=generator) * 100, target)
    timesteps = torch.tensor([10, 500, 900])
    first = prediction.clone().requires_grad_()
    loss = per_record_loss(first, target, SCHEDULER, timesteps, mask=mask)
    loss.sum().backward()
    again = per_record_loss(other_prediction, other_target, SCHEDULER, timesteps, mask=mask)
    torch.testing.assert_close(loss.detach(), again, rtol=1e-6, atol=1e-7)
    assert bool((first.grad[hidden] == 0).all()) and bool((first.grad[~hidden] != 0).any())
    # a weighted mean over every latent position: partial weights scale each position's error
    expected = ((prediction - target) ** 2 * mask).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-7)


# ================================================================ masks from alpha channels, through ingest and the cache

@pytest.fixture(scope="module")
def alpha_digits(tmp_path_factory, digits_dir) -> Path:
    """24 digits; every even one has an alpha channel that hides its left half (and the odd ones none)."""
    root = tmp_path_factory.mktemp("alpha") / "digits"
    (root / "images").mkdir(parents=True)
    rows = [json.loads(line) for line in (digits_dir / "metadata.jsonl").read_text().splitlines()[:24]]
    for index, row in enumerate(rows):
        image = Image.open(digits_dir / row["file_name"]).convert("RGB")
        if index % 2 == 0:
            alpha = np.full((32, 32), 255, dtype=np.uint8)
            alpha[:, :16] = 0
            image = Image.fromarray(np.dstack([np.asarray(image), alpha]), mode="RGBA")
        image.save(root / row["file_name"])
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def masked_cache(tmp_path_factory, alpha_digits, tiny_base_model) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("masked")
    dataset = LocalArtifact(str(tmp / "dataset"))
    ingest_split({"dataset_dir": str(alpha_digits), "resolution": 32, "alpha_mask": True}, 0, dataset,
                 LocalArtifact(str(tmp / "report.md")), task="text_to_image")
    cache = LocalArtifact(str(tmp / "cache"))
    build_cache(dataset.path, {"base": str(tiny_base_model)},
                {"batch_size": 8, "storage_dtype": "float32", "flip_latents": True}, cache, task="text_to_image")
    return {"dataset": Path(dataset.path), "cache": Path(cache.path)}


def test_alpha_channels_become_latent_loss_masks_and_opaque_images_weigh_everything_one(masked_cache):
    entries = read_manifest(masked_cache["dataset"], "train")
    records = CachedLatents(masked_cache["cache"], "train")
    half_hidden = torch.cat([torch.zeros(1, 8, 4), torch.ones(1, 8, 4)], dim=2)  # 32 px -> 8 latents: 16 px -> 4
    seen = set()
    for index, entry in enumerate(entries):
        number = int(entry.record_id.split("-")[1].split(".")[0])
        expected = half_hidden if number % 2 == 0 else torch.ones(1, 8, 8)
        assert (entry.mask is not None) == (number % 2 == 0)
        assert torch.equal(records[index]["loss_mask"], expected), entry.record_id
        seen.add(number % 2)
    assert seen == {0, 1}
    mirrored = next(i for i in range(len(records)) if records.mirrored(SampleKey(i, 0, 0))
                    and int(entries[i].record_id.split("-")[1].split(".")[0]) % 2 == 0)
    assert torch.equal(records[SampleKey(mirrored, 0, 0)]["loss_mask"], torch.flip(half_hidden, dims=[-1])), \
        "a mirrored image's mask is mirrored with it"


def test_the_training_step_ignores_masked_out_latents_and_matches_the_unmasked_step_under_ones(masked_cache,
                                                                                               tiny_base_model):
    task = TextToImageTask(tiny_base_model, masked_cache["cache"], DiffusionTrainingConfig(caption_dropout=0.0), seed=0)
    records = CachedLatents(masked_cache["cache"], "train")
    batch = default_collate([records[i] for i in range(8)])
    model = task.build_model()
    losses = {}
    for name, mask in (("ones", torch.ones_like(batch["loss_mask"])), ("absent", None), ("cache", batch["loss_mask"])):
        step_batch = {k: v for k, v in batch.items() if k != "loss_mask"} | ({"loss_mask": mask} if mask is not None else {})
        torch.manual_seed(0)
        losses[name] = float(task.training_step(model, step_batch).detach())
    assert losses["ones"] == losses["absent"]
    assert losses["cache"] < losses["ones"], "the hidden halves no longer count"

    # What the model predicts under the zero half cannot move the loss.
    class Shifted(torch.nn.Module):
        def __init__(self, inner, shift):
            super().__init__()
            self.inner, self.shift = inner, shift

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs) + self.shift

    shift = torch.zeros(8, 4, 8, 8)
    shift[..., :4] = 50.0 * (batch["loss_mask"][..., :4] == 0)
    torch.manual_seed(0)
    shifted = float(task.training_step(Shifted(model, shift), batch).detach())
    assert shifted == pytest.approx(losses["cache"], rel=1e-6)


def test_validation_losses_are_masked_like_training(masked_cache, tiny_base_model):
    task = TextToImageTask(tiny_base_model, masked_cache["cache"], DiffusionTrainingConfig(), seed=0)
    records = task.val_dataset()
    batch = default_collate([records[i] for i in range(len(records))])
    model = task.build_model().eval()
    with torch.no_grad():
        masked = task.validation_step(model, batch)["loss_sum"]
        plain = task.validation_step(model, {k: v for k, v in batch.items() if k != "loss_mask"})["loss_sum"]
    assert (batch["loss_mask"] < 1).any() and float(masked) < float(plain)


def test_a_mask_of_the_wrong_size_is_quarantined_with_one_sentence(digits_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(digits_dir, root)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()[:20]]
    (root / "masks").mkdir()
    for index, row in enumerate(rows):
        size = (32, 32) if index else (16, 32)
        Image.fromarray(np.full(size[::-1], 255, dtype=np.uint8)).save(root / "masks" / f"{index}.png")
        row["mask"] = f"masks/{index}.png"
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = LocalArtifact(str(tmp_path / "dataset"))
    summary = ingest_split({"dataset_dir": str(root), "resolution": 32, "mask_column": "mask"}, 0, dataset,
                           LocalArtifact(str(tmp_path / "report.md")), task="text_to_image")
    rejected = [json.loads(line) for line in (Path(dataset.path) / "rejected.jsonl").read_text().splitlines()]
    assert summary["num_records"] == 19 and [r["rule"] for r in rejected] == ["mask_wrong_size"]
    assert rejected[0]["reason"] == "mask is 16x32 but its image is 32x32"
    assert all(e.mask for e in read_manifest(dataset.path))
