"""Generate images from a diffusers pipeline folder for a list of captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from tqdm import tqdm

SAMPLERS = {"dpm_solver": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def load_generation_pipeline(folder: Path, sampler: str, device: torch.device) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate_images(
    pipe: StableDiffusionPipeline, captions: list[str], resolution: int, steps: int, guidance_scale: float,
    batch_size: int, seed: int, label: str = "",
) -> torch.Tensor:
    """Float images in [0, 1], shape (N, 3, H, W). Image i always uses seed + i, whatever the batching."""
    chunks = []
    for start in tqdm(range(0, len(captions), batch_size), desc=f"score: generating {label}".rstrip(), unit="batch", mininterval=5.0, disable=None):
        batch = captions[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(batch))]
        # Draw initial latents on the CPU so the same seed gives the same image on any device.
        shape = (pipe.unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(pipe.device, pipe.unet.dtype)
        output = pipe(
            prompt=batch, height=resolution, width=resolution, num_inference_steps=steps,
            guidance_scale=guidance_scale, latents=latents, output_type="np",
        )
        chunks.append(torch.from_numpy(np.asarray(output.images)).permute(0, 3, 1, 2).float())
    return torch.cat(chunks).clamp(0, 1)
