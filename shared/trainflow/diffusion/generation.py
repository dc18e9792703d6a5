"""Generate images from a diffusers pipeline folder (SD 1.x/2.x or SDXL, with its LoRA adapter if it has one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from tqdm import tqdm

from trainflow.diffusion.lora import LORA_WEIGHTS_FILE
from trainflow.diffusion.model_families import detect_family
from trainflow.diffusion.validation_samples import letterbox

SAMPLERS = {"dpm_solver": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def load_generation_pipeline(folder: Path, sampler: str, device: torch.device) -> DiffusionPipeline:
    """The folder's stock pipeline (its family's class), the LoRA adapter loaded when the folder ships one."""
    family = detect_family(Path(folder))
    pipe = family.pipeline_type().from_pretrained(folder, **family.pipeline_options())
    if (Path(folder) / LORA_WEIGHTS_FILE).is_file():
        pipe.load_lora_weights(folder)
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate_images(
    pipe: DiffusionPipeline, captions: list[str], resolution: int, steps: int, guidance_scale: float,
    batch_size: int, seed: int, label: str = "", sizes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Float images in [0, 1], shape (N, 3, H, W). Image i always uses seed + i, whatever the batching.

    With `sizes` ((height, width) per caption, e.g. each test image's bucket) every image is drawn at its own
    size, batched size by size, and letterboxed onto the largest canvas; else all at resolution x resolution.
    """
    sizes = sizes or [(resolution, resolution)] * len(captions)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    batches = [group[start:start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)]
    drawn: dict[int, torch.Tensor] = {}
    for batch in tqdm(batches, desc=f"score: generating {label}".rstrip(), unit="batch", mininterval=5.0, disable=None):
        height, width = sizes[batch[0]]
        generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in batch]
        # Draw initial latents on the CPU so the same seed gives the same image on any device.
        shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(pipe.device, pipe.unet.dtype)
        output = pipe(
            prompt=[captions[i] for i in batch], height=height, width=width, num_inference_steps=steps,
            guidance_scale=guidance_scale, latents=latents, output_type="np",
        )
        drawn.update(zip(batch, torch.from_numpy(np.asarray(output.images)).permute(0, 3, 1, 2).float()))
    return letterbox([drawn[i] for i in range(len(captions))]).clamp(0, 1)
