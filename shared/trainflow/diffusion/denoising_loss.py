"""The DDPM epsilon-prediction loss, L = ||eps - eps_theta(z_t, t, c)||^2.

`training_loss` draws fresh noise and timesteps every step. `fixed_noise_loss`
draws them from one seeded generator in dataset order, so the same split gives
the same noise at every epoch and on every device: validation losses are
comparable across epochs and between the base and the fine-tuned model.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from trainflow.diffusion.latent_cache import CachedLatents, sample_latents


def training_loss(unet, noise_scheduler, moments, text, scaling_factor: float) -> torch.Tensor:
    latents = sample_latents(moments, scaling_factor, torch.randn_like(moments[:, : moments.shape[1] // 2]))
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
    return F.mse_loss(prediction.float(), noise.float())


@torch.no_grad()
def fixed_noise_loss(
    unet, noise_scheduler, dataset: CachedLatents, scaling_factor: float, device: torch.device, batch_size: int, seed: int
) -> float:
    """Mean per-element denoising MSE over `dataset` with seed-determined noise and timesteps."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    was_training = unet.training
    unet.eval()
    for moments, text in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latents = sample_latents(moments, scaling_factor)  # the posterior mean: no sampling noise
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=text.to(device)).sample
        total += F.mse_loss(prediction.float().cpu(), noise, reduction="sum").item()
        count += noise.numel()
    unet.train(was_training)
    return total / max(count, 1)
