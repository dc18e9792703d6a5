"""Fine-tune a Stable-Diffusion UNet on cached latents: one recipe, read top to bottom.

setup -> train (epochs of steps, validation each epoch, early stopping) ->
best and last checkpoints. The VAE and text encoder are not loaded at all:
their outputs are in the cache.

Accelerate owns device placement, mixed precision and (under torchrun) DDP,
so the same recipe runs on a laptop CPU, one GPU, or a PyTorchJob.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from trainflow.atomic_files import atomic_directory, atomic_write_json
from trainflow.config import TrainConfig
from trainflow.devices import pick_device, resolve_mixed_precision
from trainflow.diffusion.denoising_loss import fixed_noise_loss, training_loss
from trainflow.diffusion.latent_cache import CachedLatents, read_cache_attrs, read_uncond_embedding
from trainflow.errors import UserFacingError
from trainflow.training.early_stopping import EarlyStopping

VALIDATION_SEED_OFFSET = 1_000_003  # validation noise differs from the training stream but is fixed per run


@dataclasses.dataclass
class TrainingOutcome:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stop_reason: str
    history: list[dict[str, float]]
    best_checkpoint: Path
    last_checkpoint: Path
    mixed_precision: str
    device: str


class TextToImageFinetune:
    def __init__(self, cfg: TrainConfig, base_folder: Path, cache_dir: Path, checkpoint_dir: Path, seed: int) -> None:
        self.cfg = cfg
        self.base_folder = base_folder
        self.cache_dir = cache_dir
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        device = pick_device(self.cfg.device)
        self.mixed_precision = resolve_mixed_precision(self.cfg.mixed_precision, device)
        self.accelerator = Accelerator(mixed_precision=self.mixed_precision, cpu=device.type == "cpu")
        set_seed(self.seed)
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()

    def _setup_data(self) -> None:
        attrs = read_cache_attrs(self.cache_dir)
        self.scaling_factor = float(attrs["scaling_factor"])
        self.uncond = read_uncond_embedding(self.cache_dir)
        self.train_set = CachedLatents(self.cache_dir, "train")
        self.val_set = CachedLatents(self.cache_dir, "val")
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise UserFacingError("the cache has an empty train or val split; ingest more records or change ingest.split")
        self.train_loader = DataLoader(
            self.train_set, batch_size=self.cfg.batch_size, shuffle=True, num_workers=self.cfg.num_workers,
            pin_memory=self.accelerator.device.type == "cuda", drop_last=False,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _setup_model(self) -> None:
        self.unet = UNet2DConditionModel.from_pretrained(self.base_folder / "unet")
        self.noise_scheduler = DDPMScheduler.from_pretrained(self.base_folder / "scheduler")
        self.unet.train()

    def _setup_optimizer(self) -> None:
        self.optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        steps_per_epoch = math.ceil(len(self.train_set) / self.cfg.batch_size / self.accelerator.num_processes)
        self.lr_schedule = get_scheduler(
            self.cfg.lr_schedule, self.optimizer, num_warmup_steps=self.cfg.warmup_steps,
            num_training_steps=steps_per_epoch * self.cfg.max_epochs,
        )
        self.unet, self.optimizer, self.train_loader, self.lr_schedule = self.accelerator.prepare(
            self.unet, self.optimizer, self.train_loader, self.lr_schedule
        )

    # ----------------------------------------------------------------- train
    def train(self) -> TrainingOutcome:
        stopper = EarlyStopping(self.cfg.early_stopping.patience, self.cfg.early_stopping.min_delta)
        history: list[dict[str, float]] = []
        stop_reason = f"reached train.max_epochs ({self.cfg.max_epochs})"
        uncond = self.uncond.to(self.accelerator.device)
        step = 0
        for epoch in range(1, self.cfg.max_epochs + 1):
            started = time.time()
            epoch_loss, batches = 0.0, 0
            progress = tqdm(self.train_loader, desc=f"train: epoch {epoch}/{self.cfg.max_epochs}", unit="step",
                            leave=False, mininterval=5.0,
                            disable=None if self.accelerator.is_main_process else True)
            for moments, text in progress:
                text = self._drop_captions(text, uncond)
                with self.accelerator.autocast():
                    loss = training_loss(self.unet, self.noise_scheduler, moments, text, self.scaling_factor)
                if not torch.isfinite(loss):
                    self.save_checkpoint("last", epoch - 1, history)
                    raise UserFacingError(
                        f"training loss became {loss.item()} at epoch {epoch}, step {step}; lower train.learning_rate "
                        f"or set train.grad_clip_norm. Checkpoints written so far are kept in {self.checkpoint_dir}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)
                if self.cfg.grad_clip_norm > 0:
                    self.accelerator.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip_norm)
                self.optimizer.step()
                self.lr_schedule.step()
                epoch_loss += loss.item()
                batches += 1
                step += 1
            val_loss = self.validate()
            record = {"epoch": epoch, "train_loss": epoch_loss / max(batches, 1), "val_loss": val_loss,
                      "lr": self.lr_schedule.get_last_lr()[0], "seconds": round(time.time() - started, 2)}
            history.append(record)
            improved = stopper.update(epoch, val_loss)
            if improved:
                self.save_checkpoint("best", epoch, history)
            self.save_checkpoint("last", epoch, history)
            self._print_epoch(record, improved)
            if stopper.should_stop:
                stop_reason = stopper.stop_reason or stop_reason
                break
        assert stopper.best_epoch is not None  # at least one epoch ran and val losses are finite
        return TrainingOutcome(
            best_epoch=stopper.best_epoch, best_val_loss=stopper.best_value, epochs_run=len(history),
            stop_reason=stop_reason, history=history, best_checkpoint=self.checkpoint_dir / "best",
            last_checkpoint=self.checkpoint_dir / "last", mixed_precision=self.mixed_precision,
            device=str(self.accelerator.device),
        )

    def _drop_captions(self, text: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        if self.cfg.caption_dropout <= 0:
            return text
        drop = torch.rand(text.shape[0], device=text.device) < self.cfg.caption_dropout
        return torch.where(drop[:, None, None], uncond.to(text.dtype).expand_as(text), text)

    def validate(self) -> float:
        unet = self.accelerator.unwrap_model(self.unet)
        with self.accelerator.autocast():
            loss = fixed_noise_loss(unet, self.noise_scheduler, self.val_set, self.scaling_factor,
                                    self.accelerator.device, self.cfg.batch_size, self.seed + VALIDATION_SEED_OFFSET)
        if not math.isfinite(loss):
            raise UserFacingError(f"validation loss is {loss}; lower train.learning_rate or set train.grad_clip_norm")
        return loss

    def save_checkpoint(self, name: str, epoch: int, history: list[dict[str, Any]]) -> None:
        """Write checkpoint `name` (best | last) atomically: UNet in safetensors + training state."""
        if not self.accelerator.is_main_process:
            return
        with atomic_directory(self.checkpoint_dir / name) as staging:
            self.accelerator.unwrap_model(self.unet).save_pretrained(staging / "unet", safe_serialization=True)
            atomic_write_json(staging / "training_state.json", {"epoch": epoch, "history": history})

    def _print_epoch(self, record: dict[str, float], improved: bool) -> None:
        if self.accelerator.is_main_process:
            marker = "  * best" if improved else ""
            print(
                f"train: epoch {int(record['epoch'])}/{self.cfg.max_epochs}  train_loss {record['train_loss']:.5f}  "
                f"val_loss {record['val_loss']:.5f}  lr {record['lr']:.2e}  {record['seconds']:.1f}s{marker}",
                flush=True,
            )


def read_training_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "training_state.json").read_text())
