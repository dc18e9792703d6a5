"""Pretrain the demo's tiny UNet on the digits with one caption that never names the digit.

The result draws digit-like images but cannot follow a prompt, like a general
base model that has never seen the user's labels: fine-tuned vs base then
measures what fine-tuning taught (prompt accuracy), not merely "anything beats
a random UNet".
"""

from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.nn import functional as F
from tqdm import trange
from transformers import CLIPTextModel, CLIPTokenizer

from trainflow.demo.classifier_training import images_to_tensor
from trainflow.demo.digits_dataset import digits_as_images

PRETRAIN_CAPTION = "a handwritten digit"
# Share of steps with the empty caption, so classifier-free guidance has an
# unconditional branch to push away from, as in the fine-tuning stage.
EMPTY_CAPTION_SHARE = 0.1


@torch.no_grad()
def _encode_caption(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, caption: str) -> torch.Tensor:
    ids = tokenizer([caption], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


@torch.no_grad()
def _digit_latents(vae: AutoencoderKL) -> torch.Tensor:
    images, _ = digits_as_images()
    pixels = images_to_tensor(images) * 2 - 1
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
    return means * vae.config.scaling_factor


def pretrain_unet(
    unet: UNet2DConditionModel, vae: AutoencoderKL, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
    scheduler: DDPMScheduler, steps: int, seed: int, batch_size: int = 64, learning_rate: float = 2e-3,
) -> dict[str, float]:
    """Train `unet` in place for `steps` denoising steps on all digits, captioned PRETRAIN_CAPTION.

    Inputs: the pipeline's parts (the VAE already trained). Output: facts for the
    assets marker: final loss (mean of the last 20 steps), steps, and the CPU
    seconds the loop took (process time, so a loaded machine does not inflate it).
    """
    torch.manual_seed(seed)
    latents = _digit_latents(vae)
    caption_states = _encode_caption(tokenizer, text_encoder, PRETRAIN_CAPTION)
    empty_states = _encode_caption(tokenizer, text_encoder, "")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=max(steps, 1), pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    unet.train()
    for _ in trange(steps, desc="demo: pretraining tiny UNet (caption without the digit)", unit="step", mininterval=2.0, disable=None):
        batch = latents[torch.randint(len(latents), (batch_size,), generator=generator)]
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        empty = torch.rand(batch_size, generator=generator) < EMPTY_CAPTION_SHARE
        states = torch.where(empty[:, None, None], empty_states, caption_states)
        prediction = unet(scheduler.add_noise(batch, noise, timesteps), timesteps, encoder_hidden_states=states).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    unet.eval()
    tail = losses[-20:]
    return {
        "unet_pretrain_steps": steps,
        "unet_pretrain_loss": sum(tail) / len(tail) if tail else float("nan"),
        "unet_pretrain_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "unet_pretrain_wall_seconds": round(time.perf_counter() - wall_started, 1),
    }
