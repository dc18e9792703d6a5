"""Training a Stable Diffusion (1.x/2.x or XL) UNet on cached latents: the model the engine trains and the task
object it calls (trainflow.tasks.text_to_image holds the task's definition, test outputs and prediction).

Training never runs the VAE: the cache holds each image's posterior and each
caption's embedding (and token ids, for training the text encoder); only the
validation sample grids for TensorBoard decode through it. Options:
epsilon or v-prediction (from the base scheduler), min-SNR-gamma weighting,
offset noise, input perturbation, caption dropout for classifier-free guidance,
LoRA through peft, gradient checkpointing, text-encoder training, loss masks
(ingest masks, area-averaged to the latent grid), class images for prior preservation
at their own loss weight and per-dataset repeats (diffusion.prior_mix). The family's differences (sdxl's
second text encoder, pooled embedding and time ids) live in diffusion.model_families.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from trainflow.config import DiffusionTrainingConfig
from trainflow.diffusion.denoising_loss import check_prediction_type, fixed_noise_record_losses
from trainflow.data.cache.latent_cache import (
    CachedLatents, has_buckets, read_cache_attrs, read_uncond_embedding, read_uncond_input_ids, read_uncond_record,
)
from trainflow.diffusion.lora import merged_unet_folder, save_lora_adapter
from trainflow.diffusion.model_families import SD, ModelFamily, detect_family, prompt_embeddings
from trainflow.diffusion.model_loading import copy_pipeline_parts
from trainflow.diffusion.prior_mix import MixedTrainRecords, needs_mixing
from trainflow.diffusion.validation_samples import validation_sample_images
from trainflow.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from trainflow.config import TrainConfig

VALIDATION_SEED_OFFSET = 1_000_003  # validation noise differs from the test split's, fixed per record
# Validation sample grids show progress, not final quality: a few deterministic DDIM steps keep them cheap.
SAMPLE_STEPS = 10
SAMPLE_GUIDANCE_SCALE = 5.0


class DiffusionModel(nn.Module):
    """What training changes: the UNet, and the text encoder(s) when they are trained (sdxl has two)."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel | None,
                 text_encoder_2: nn.Module | None = None, family: ModelFamily = SD) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.family = family

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    def encoder_states(self, text: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0] if self.text_encoder is not None else text

    def conditioning(self, text: torch.Tensor, input_ids: torch.Tensor, pooled: torch.Tensor | None = None,
                     input_ids_2: torch.Tensor | None = None, time_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(states the UNet cross-attends to, its added_cond_kwargs or None): from the trained encoders when
        there are any, else from the cache's embeddings."""
        if self.text_encoder is not None:
            text, pooled = prompt_embeddings(self.family, self.text_encoders, [input_ids, input_ids_2][:len(self.text_encoders)])
        return text, {"text_embeds": pooled, "time_ids": time_ids} if self.family.takes_time_ids else None

    def batch_conditioning(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return self.conditioning(batch["text"], batch["input_ids"], batch.get("pooled"), batch.get("input_ids_2"),
                                 batch.get("time_ids"))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, input_ids: torch.Tensor,
                pooled: torch.Tensor | None = None, input_ids_2: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None) -> torch.Tensor:
        states, added = self.conditioning(text, input_ids, pooled, input_ids_2, time_ids)
        return self.unet(noisy, timesteps, encoder_hidden_states=states, added_cond_kwargs=added).sample


class TextToImageTask:
    name = "text_to_image"

    def __init__(self, base_folder: Path, cache_dir: Path, cfg: DiffusionTrainingConfig, seed: int,
                 family: str = "auto", train_cfg: "TrainConfig | None" = None) -> None:
        self.base_folder, self.cache_dir, self.cfg, self.seed = Path(base_folder), Path(cache_dir), cfg, seed
        attrs = read_cache_attrs(cache_dir)
        self.family = check_cache_family(detect_family(self.base_folder, family), attrs, self.cache_dir)
        self.scaling_factor = float(attrs["scaling_factor"])
        self.uncond = read_uncond_record(cache_dir)
        self.uncond_text = read_uncond_embedding(cache_dir)
        self.uncond_ids = read_uncond_input_ids(cache_dir)
        self.noise_scheduler = DDPMScheduler.from_pretrained(self.base_folder / "scheduler")
        self.prediction_type = check_prediction_type(self.noise_scheduler, f"{self.base_folder / 'scheduler'}")
        self._sample_vae: AutoencoderKL | None = None  # loaded on the first validation that draws images
        self._sample_records: tuple[int, dict[str, torch.Tensor]] | None = None  # (count asked, its val records)
        if self.family.takes_time_ids or has_buckets(cache_dir):
            # validation_images below draws one size with the SD pipeline; sdxl and bucketed caches draw through
            # diffusion.validation_samples (one path once validation prompts land there).
            self.validation_images = functools.partial(validation_sample_images, self)
        if train_cfg is not None and train_cfg.validation_prompts:  # the engine draws them (training.prompt_samples)
            from trainflow.diffusion.validation_prompts import ValidationPromptSampler

            first = self.val_dataset()[0]["moments"]
            self.prompt_samples = ValidationPromptSampler(
                self.base_folder, self.family, self.noise_scheduler.config, train_cfg.validation_prompts,
                train_cfg.validation_prompt_scoring, seed, tuple(first.shape[1:]))

    # ------------------------------------------------------------ model and data
    def build_model(self) -> DiffusionModel:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        from trainflow.diffusion.lora import add_lora

        unet = UNet2DConditionModel.from_pretrained(self.base_folder / "unet")
        encoders = ([cls.from_pretrained(self.base_folder / part)
                     for cls, part in zip((CLIPTextModel, CLIPTextModelWithProjection), self.family.text_encoders)]
                    if self.cfg.train_text_encoder else [])
        if self.cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for encoder in encoders:
                encoder.activation_checkpointing_enable()
        if self.cfg.lora is not None:
            add_lora(unet, self.cfg.lora, *encoders)
        model = DiffusionModel(unet, *(encoders or [None]), family=self.family)
        return model.train()

    def train_dataset(self) -> CachedLatents | MixedTrainRecords:
        records = CachedLatents(self.cache_dir, "train")
        if not needs_mixing(records, self.cfg.repeats, self.cfg.prior_preservation):
            return records
        return MixedTrainRecords(records, self.cfg.repeats, self.cfg.prior_preservation, self.seed)

    def val_dataset(self):
        from trainflow.data.cache.latent_cache import CachedLatents

        return CachedLatents(self.cache_dir, "val")

    def learning_rates(self) -> dict[str, float]:
        if self.cfg.train_text_encoder and self.cfg.text_encoder_learning_rate is not None:
            return {"text_encoder": self.cfg.text_encoder_learning_rate}
        return {}

    def compile_targets(self, model: DiffusionModel) -> list[nn.Module]:
        return [model.unet]  # train.speed.compile: the UNet is where the time goes

    # ------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from trainflow.data.cache.latent_cache import sample_latents
        from trainflow.diffusion.denoising_loss import diffusion_target, per_record_loss

        cfg, scheduler = self.cfg, self.noise_scheduler
        moments = batch["moments"]
        size = moments.shape[0]
        latents = sample_latents(moments, self.scaling_factor, torch.randn_like(moments[:, : moments.shape[1] // 2]))
        noise = torch.randn_like(latents)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(size, latents.shape[1], 1, 1, device=latents.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), device=latents.device)
        model_noise = noise + cfg.input_perturbation * torch.randn_like(noise) if cfg.input_perturbation else noise
        noisy = scheduler.add_noise(latents, model_noise, timesteps)
        text, input_ids = batch["text"], batch["input_ids"]
        extra = {name: batch[name] for name in ("pooled", "input_ids_2", "time_ids") if name in batch}
        if cfg.caption_dropout > 0:
            drop = torch.rand(size, device=latents.device) < cfg.caption_dropout
            text, input_ids = caption_dropped(drop, self.uncond["text"], text), caption_dropped(drop, self.uncond["input_ids"], input_ids)
            for name in ("pooled", "input_ids_2"):
                if name in extra:
                    extra[name] = caption_dropped(drop, self.uncond[name], extra[name])
        prediction = model(noisy, timesteps, text, input_ids, **extra)
        target = diffusion_target(scheduler, latents, noise, timesteps)
        losses = per_record_loss(prediction, target, scheduler, timesteps, cfg.snr_gamma, batch.get("loss_mask"))
        if "prior" in batch and cfg.prior_preservation is not None:  # DreamBooth: class images at their own weight
            losses = losses * torch.where(batch["prior"], cfg.prior_preservation.loss_weight, 1.0)
        return losses.mean()

    def validation_step(self, model: DiffusionModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        states, added = model.batch_conditioning(batch)
        losses = fixed_noise_record_losses(model.unet, self.noise_scheduler, batch["moments"], states, batch["index"],
                                           self.scaling_factor, self.seed + VALIDATION_SEED_OFFSET, added,
                                           batch.get("loss_mask"))
        return {"loss_sum": losses.sum(), "count": torch.tensor(float(losses.numel()), device=losses.device)}

    def finalize_validation(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": float(totals["loss_sum"] / totals["count"])}

    @torch.no_grad()
    def validation_images(self, model: DiffusionModel, count: int) -> torch.Tensor:
        """Images for the first `count` val captions from the current UNet and the base VAE: (N, 3, H, W) in [0, 1].

        The same starting noise (seeded by the run seed) at every validation, so successive
        grids differ only by training. Draws nothing from the global generator. The VAE is
        loaded on the first call, so runs without sample images never load it.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
        from torch.utils.data import default_collate

        if self._sample_records is None or self._sample_records[0] != count:
            records = self.val_dataset()
            self._sample_records = (count, default_collate([records[i] for i in range(min(count, len(records)))]))
        batch = self._sample_records[1]
        device = next(model.unet.parameters()).device
        text = model.encoder_states(batch["text"].to(device), batch["input_ids"].to(device))
        uncond = model.encoder_states(self.uncond_text.to(device), self.uncond_ids.to(device)).expand_as(text)
        if self._sample_vae is None:
            self._sample_vae = AutoencoderKL.from_pretrained(self.base_folder / "vae").eval()
        pipe = StableDiffusionPipeline(
            vae=self._sample_vae.to(device), text_encoder=None, tokenizer=None, unet=model.unet,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        channels, height, width = batch["moments"].shape[1] // 2, *batch["moments"].shape[2:]
        generator = torch.Generator().manual_seed(self.seed)
        latents = torch.randn((len(text), channels, height, width), generator=generator).to(device, text.dtype)
        images = pipe(prompt_embeds=text, negative_prompt_embeds=uncond, latents=latents, output_type="pt",
                      height=height * pipe.vae_scale_factor, width=width * pipe.vae_scale_factor,
                      num_inference_steps=SAMPLE_STEPS, guidance_scale=SAMPLE_GUIDANCE_SCALE).images
        return images.float().clamp(0, 1).cpu()

    # ------------------------------------------------------------ export
    def export(self, model: DiffusionModel, folder: Path) -> None:
        """A complete diffusers pipeline folder (the family's stock class loads it): the base's parts plus what
        training changed."""
        folder = Path(folder)
        trained_text = self.family.text_encoders if model.text_encoder is not None else ()
        if self.cfg.lora is not None and not self.cfg.lora.merge:
            copy_pipeline_parts(self.base_folder, folder)
            save_lora_adapter(folder, self.family, model.unet, *model.text_encoders)
            return
        copy_pipeline_parts(self.base_folder, folder, replaced=("unet", *trained_text))
        if self.cfg.lora is not None:
            merged_unet_folder(self.base_folder, self.family, model.unet, model.text_encoders, folder)
            return
        model.unet.save_pretrained(folder / "unet", safe_serialization=True)
        for part, encoder in zip(trained_text, model.text_encoders):
            encoder.save_pretrained(folder / part, safe_serialization=True)


def caption_dropped(drop: torch.Tensor, empty: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` with the records where `drop` is set replaced by the empty caption's (classifier-free guidance)."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    return torch.where(drop.view(shape), empty.to(values.device, values.dtype).expand_as(values), values)


def check_cache_family(family: ModelFamily, attrs: dict, cache_dir: Path) -> ModelFamily:
    """The base's family, when the cache was encoded by the same family's text encoders; else ConfigError."""
    cached = attrs.get("family", "sd")
    if cached != family.name:
        raise ConfigError(f"model.base: the cache in {cache_dir} was encoded for a {cached!r} base but model.base is "
                          f"{family.name!r}; rebuild the cache with this base (run build_cache again)")
    return family
