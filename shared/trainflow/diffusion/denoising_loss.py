"""The denoising objective, for epsilon and v-prediction, with optional min-SNR weighting.

Training draws fresh latents, noise and timesteps every step from the global
generator (saved in checkpoints, so a resumed run draws the same). Validation
and test losses draw noise and a timestep from a generator seeded by each
record's index, so a record gets the same noise at every epoch, for every model,
on every device, in any batch size or world size: losses compare directly.
"""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_snr
from torch.nn import functional as F

from trainflow.data.cache.latent_cache import sample_latents
from trainflow.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(noise_scheduler, where: str) -> str:
    kind = noise_scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ConfigError(
            f"{where}: prediction_type {kind!r} is not supported; trainflow trains epsilon or v_prediction models "
            "(set it in the base model's scheduler/scheduler_config.json)"
        )
    return kind


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon) or the velocity (v_prediction)."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def per_record_loss(prediction: torch.Tensor, target: torch.Tensor, noise_scheduler, timesteps: torch.Tensor,
                    snr_gamma: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per record, optionally weighted by min(SNR, gamma) (Hang et al., 2023).

    `mask` (N, 1, h, w) in 0..1 weighs each latent position (all channels alike); the mean stays over every
    position, so a mask of ones is the unmasked loss and a zero leaves that position out of the gradient.
    """
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if mask is not None:
        squared = squared * mask.to(squared.device, squared.dtype)
    losses = squared.mean(dim=tuple(range(1, prediction.dim())))
    if snr_gamma is None:
        return losses
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    # For v-prediction the target already carries an (SNR + 1) factor.
    weights = clipped / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else clipped / snr
    return losses * weights


def seeded_noise(indices: torch.Tensor, shape: tuple[int, ...], num_timesteps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (N, *shape) and timesteps (N,) drawn from one generator per record index."""
    noises, steps = [], []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(index))
        steps.append(torch.randint(0, num_timesteps, (1,), generator=generator))
        noises.append(torch.randn(shape, generator=generator))
    return torch.stack(noises), torch.cat(steps)


def fixed_noise_record_losses(unet, noise_scheduler, moments: torch.Tensor, encoder_states: torch.Tensor,
                              indices: torch.Tensor, scaling_factor: float, seed: int,
                              added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-record denoising loss with the noise and timestep fixed by each record's index (and masked as in training)."""
    latents = sample_latents(moments, scaling_factor)  # the posterior mean: no sampling noise
    noise, timesteps = seeded_noise(indices.cpu(), tuple(latents.shape[1:]), noise_scheduler.config.num_train_timesteps, seed)
    noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy.to(encoder_states.dtype) if encoder_states.is_floating_point() else noisy, timesteps,
                      encoder_hidden_states=encoder_states, added_cond_kwargs=added_cond_kwargs).sample
    return per_record_loss(prediction, diffusion_target(noise_scheduler, latents, noise, timesteps), noise_scheduler,
                           timesteps, mask=mask)
