"""A tiny Stable-Diffusion-XL-architecture pipeline, built from configs (no download), for tests and examples.

The same classes and wiring as stabilityai/stable-diffusion-xl-base-1.0: two text encoders (CLIPTextModel and
CLIPTextModelWithProjection, whose penultimate hidden states are concatenated for cross-attention), a UNet with
`addition_embed_type="text_time"` (the second encoder's pooled projection plus six size/crop time ids),
AutoencoderKL, and a scaled-linear DDPM schedule; only far smaller. The VAE is the demo's (trained briefly on
the digits); the encoders and the UNet are random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from trainflow.atomic_files import atomic_directory
from trainflow.demo.digits_dataset import DEMO_RESOLUTION
from trainflow.demo.tiny_stable_diffusion import (
    MAX_CAPTION_TOKENS, TOKEN_EMBEDDING_GAIN, build_caption_tokenizer, build_text_encoder, build_vae, caption_words, train_vae,
)

TIME_EMBED_DIM = 8  # per time id; SDXL's is 256
POOLED_DIM = 32  # the second encoder's projection; SDXL's is 1280


def build_second_text_encoder(vocab_size: int, seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_CAPTION_TOKENS, projection_dim=POOLED_DIM, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))
    with torch.no_grad():  # as the first encoder: captions distinguishable from the first step
        encoder.get_input_embeddings().weight.mul_(TOKEN_EMBEDDING_GAIN)
    return encoder.eval()


def build_sdxl_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=DEMO_RESOLUTION // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM,
    )


def build_tiny_sdxl_pipeline(folder: str | Path, seed: int = 0, vae_steps: int = 200) -> dict[str, float]:
    """Write the tiny SDXL pipeline to `folder` (diffusers layout, safetensors); returns facts about its VAE."""
    tokenizer = build_caption_tokenizer(caption_words())
    text_encoder = build_text_encoder(len(tokenizer), seed)
    text_encoder_2 = build_second_text_encoder(len(tokenizer), seed + 2)
    vae = build_vae()
    recon_mse = train_vae(vae, vae_steps, seed)
    torch.manual_seed(seed + 1)
    unet = build_sdxl_unet(text_encoder.config.hidden_size + text_encoder_2.config.hidden_size)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    with atomic_directory(folder) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
    return {"vae_reconstruction_mse": recon_mse, "vae_scaling_factor": vae.config.scaling_factor}
