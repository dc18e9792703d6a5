"""Prepare (once) everything the demo needs, offline: data, base model, classifier."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from trainflow.atomic_files import atomic_write_json
from trainflow.demo.classifier_training import train_digits_classifier
from trainflow.demo.digits_dataset import write_digits_imagefolder, write_mixed_aspect_digits
from trainflow.demo.tiny_stable_diffusion import build_tiny_pipeline
from trainflow.models.image_classifier import save_classifier

# Bump when the recipe of an asset changes, so stale caches are rebuilt.
# 3: the base UNet is pretrained on captions that never name the digit; VAE PSNR/SSIM recorded.
ASSETS_VERSION = 3
# Budgeted so pretraining takes about a minute of an idle 2-core CPU (measured
# in CPU seconds, recorded in assets.json), keeping `make run` within 8 minutes.
UNET_PRETRAIN_STEPS = 100
MARKER = "assets.json"
# CPU float reductions split work by thread, so the assets' weights depend on torch's thread count (the
# classifier's held-out accuracy was 0.967 with 2 threads and 0.861 with 1). Building with a fixed count makes
# the demo assets, and so the demo's FID and prompt accuracy, the same on any machine with this torch build.
ASSET_BUILD_THREADS = 2


@contextmanager
def fixed_torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def demo_asset_paths(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {"dataset": root / "digits", "base_model": root / "tiny-sd-base", "classifier": root / "digits-classifier"}


def prepare_mixed_aspect_digits(root: str | Path) -> Path:
    """The digits padded to landscape and portrait canvases (pipelines/configs/digits-buckets.yaml), written once."""
    folder = Path(root) / "digits-mixed"
    if not (folder / "metadata.jsonl").is_file():
        count = write_mixed_aspect_digits(folder)
        print(f"demo assets: wrote {count} digits on square, landscape and portrait canvases to {folder}")
    return folder


def prepare_demo_assets(root: str | Path, seed: int = 0, force: bool = False) -> dict[str, str]:
    """Build the demo dataset, base model and classifier under `root`, unless already there.

    A marker file records the recipe version; a partial earlier attempt is
    rebuilt because every asset is written atomically and the marker last.
    """
    root = Path(root)
    paths = demo_asset_paths(root)
    marker = root / MARKER
    if not force and marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("version") == ASSETS_VERSION and all(p.exists() for p in paths.values()):
            print(f"demo assets: reusing {root} (built {recorded.get('built_at')})")
            return {name: str(path) for name, path in paths.items()}
    started = time.time()
    with fixed_torch_threads(ASSET_BUILD_THREADS):
        facts, accuracy = _build_assets(paths, seed)
    atomic_write_json(marker, {
        "version": ASSETS_VERSION, "built_at": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
        "torch_threads": ASSET_BUILD_THREADS, "classifier_held_out_accuracy": accuracy, **facts,
    })
    return {name: str(path) for name, path in paths.items()}


def _build_assets(paths: dict[str, Path], seed: int) -> tuple[dict, float]:
    count = write_digits_imagefolder(paths["dataset"])
    print(f"demo assets: wrote {count} digit images with captions to {paths['dataset']}")
    classifier, accuracy = train_digits_classifier(seed=seed)
    if accuracy < 0.9:
        raise RuntimeError(f"digits classifier reached only {accuracy:.1%} held-out accuracy; its features would not be informative")
    save_classifier(classifier, paths["classifier"])
    print(f"demo assets: digits classifier held-out accuracy {accuracy:.1%} -> {paths['classifier']}")
    facts = build_tiny_pipeline(paths["base_model"], seed=seed, unet_pretrain_steps=UNET_PRETRAIN_STEPS)
    print(
        f"demo assets: tiny SD base model (VAE reconstructions: PSNR {facts['vae_reconstruction_psnr']:.1f} dB, "
        f"SSIM {facts['vae_reconstruction_ssim']:.3f}; UNet pretrained {facts['unet_pretrain_steps']} steps on "
        f"captions without the digit, {facts['unet_pretrain_cpu_seconds']:.0f} CPU s) -> {paths['base_model']}"
    )
    return facts, accuracy
