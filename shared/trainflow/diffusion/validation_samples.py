"""Sample images for TensorBoard from the cached val captions, for any family and any mix of image sizes.

Each of the first `count` val records is drawn at its own size (its bucket) from the same seeded starting
noise at every validation, through the family's stock pipeline built around the UNet being trained; images
of several sizes are letterboxed onto one canvas so they share a grid. Nothing is drawn from the global
random generator. The VAE is loaded on the first call (kept on the task), so runs without grids never load it.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch.nn import functional as F
from torch.utils.data import default_collate

SAMPLE_STEPS = 10  # a few deterministic DDIM steps: grids show progress, not final quality
SAMPLE_GUIDANCE_SCALE = 5.0


def letterbox(images: list[torch.Tensor], height: int | None = None, width: int | None = None) -> torch.Tensor:
    """(N, C, H, W) of images of any sizes, each centred on a black canvas of the largest height and width."""
    height = height or max(image.shape[-2] for image in images)
    width = width or max(image.shape[-1] for image in images)
    padded = []
    for image in images:
        top, left = (height - image.shape[-2]) // 2, (width - image.shape[-1]) // 2
        padded.append(F.pad(image, (left, width - image.shape[-1] - left, top, height - image.shape[-2] - top)))
    return torch.stack(padded)


def _pipeline(task, model, vae: AutoencoderKL):
    family = task.family
    parts = {"vae": vae, "unet": model.unet, "scheduler": DDIMScheduler.from_config(task.noise_scheduler.config)}
    parts.update({name: None for name in (*family.text_encoders, *family.tokenizers)})
    if family.name == "sd":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        parts.update(add_watermarker=False)
    pipe = family.pipeline_type()(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def validation_sample_images(task, model, count: int) -> torch.Tensor:
    """Images for the first `count` val captions from the current UNet and the base VAE: (N, 3, H, W) in [0, 1]."""
    records = task.val_dataset()
    picked = [records[i] for i in range(min(count, len(records)))]
    device = next(model.unet.parameters()).device
    if task._sample_vae is None:
        task._sample_vae = AutoencoderKL.from_pretrained(task.base_folder / "vae").eval()
    pipe = _pipeline(task, model, task._sample_vae.to(device))
    uncond = {name: value.to(device) for name, value in task.uncond.items()}
    generator = torch.Generator().manual_seed(task.seed)
    images: dict[int, torch.Tensor] = {}
    for latent_hw in dict.fromkeys(tuple(r["moments"].shape[1:]) for r in picked):  # sizes in order of first use
        members = [i for i, r in enumerate(picked) if tuple(r["moments"].shape[1:]) == latent_hw]
        batch = {name: value.to(device) for name, value in default_collate([picked[i] for i in members]).items()}
        states, added = model.batch_conditioning(batch)
        empty, empty_added = model.conditioning(uncond["text"], uncond["input_ids"], uncond.get("pooled"),
                                                uncond.get("input_ids_2"), None)
        options = {}
        if added is not None:
            options = {"pooled_prompt_embeds": added["text_embeds"],
                       "negative_pooled_prompt_embeds": empty_added["text_embeds"].expand_as(added["text_embeds"])}
        channels = batch["moments"].shape[1] // 2
        latents = torch.randn((len(members), channels, *latent_hw), generator=generator).to(device, states.dtype)
        drawn = pipe(prompt_embeds=states, negative_prompt_embeds=empty.expand_as(states), latents=latents,
                     height=latent_hw[0] * pipe.vae_scale_factor, width=latent_hw[1] * pipe.vae_scale_factor,
                     num_inference_steps=SAMPLE_STEPS, guidance_scale=SAMPLE_GUIDANCE_SCALE, output_type="pt",
                     **options).images
        images.update(zip(members, drawn.float().clamp(0, 1).cpu()))
    return letterbox([images[i] for i in range(len(picked))])
