"""Build the demo's base model: a tiny Stable-Diffusion-architecture pipeline.

Same classes as stable-diffusion-v1-5 (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel + CLIPTokenizer, DDPMScheduler), only far smaller, so the whole
pipeline trains on a laptop CPU. The VAE is trained briefly on the digits so
its latents decode back to digits; the text encoder stays random. The UNet is
random too, unless `unet_pretrain_steps` is given: then it is pretrained on the
digits with one caption that never names the digit (demo.unet_pretraining), so
it draws digits but cannot follow a prompt — teaching it that is the pipeline's job.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn
from tqdm import trange
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trainflow.atomic_files import atomic_directory
from trainflow.demo.classifier_training import images_to_tensor
from trainflow.demo.digits_dataset import DEMO_RESOLUTION, DIGIT_WORDS, digit_caption, digits_as_images
from trainflow.demo.unet_pretraining import pretrain_unet
from trainflow.metrics.image_quality import psnr, quantise_like_png, ssim

MAX_CAPTION_TOKENS = 16
TOKEN_EMBEDDING_GAIN = 10.0


def build_caption_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges turn each of `words` into one token.

    A real CLIP vocabulary cannot be downloaded here. Any other word still
    tokenizes, character by character, so the tokenizer accepts any lowercase
    caption. One token per caption word lets a tiny UNet learn to attend to
    the word that matters within a few hundred steps.
    """
    characters = list(string.ascii_lowercase + string.digits + ".,'-!?")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for character in characters:
            vocab[character + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_CAPTION_TOKENS)


def caption_words() -> list[str]:
    return sorted({word for label in range(len(DIGIT_WORDS)) for word in digit_caption(label).split()})


def build_text_encoder(vocab_size: int, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_CAPTION_TOKENS,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    encoder = CLIPTextModel(config)
    # Random token embeddings start as small as position embeddings (std 0.02),
    # which drowns out which word a token is. Scaling them up makes captions
    # clearly distinguishable from the first step, as a trained encoder's are.
    with torch.no_grad():
        encoder.get_input_embeddings().weight.mul_(TOKEN_EMBEDDING_GAIN)
    return encoder.eval()


def build_vae() -> AutoencoderKL:
    # Three blocks = two downsamplings: 32x32x3 images <-> 8x8x4 latents.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=DEMO_RESOLUTION,
    )


def build_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=DEMO_RESOLUTION // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def train_vae(vae: AutoencoderKL, steps: int, seed: int, batch_size: int = 32) -> float:
    """Fit the VAE to the digits (reconstruction + small KL); returns the final reconstruction MSE.

    Afterwards `scaling_factor` is set so scaled latents have unit variance, as
    Stable Diffusion does (its 0.18215 was found the same way).
    """
    torch.manual_seed(seed)
    images, _ = digits_as_images()
    pixels = images_to_tensor(images) * 2 - 1
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    recon_mse = float("nan")
    progress = trange(steps, desc="demo: training tiny VAE", unit="step", mininterval=2.0, disable=None)
    for _ in progress:
        batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        recon = nn.functional.mse_loss(reconstruction, batch)
        loss = recon + 1e-5 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recon_mse = recon.item()
        progress.set_postfix(mse=f"{recon_mse:.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in pixels.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return recon_mse


@torch.no_grad()
def vae_reconstruction_quality(vae: AutoencoderKL, count: int = 256) -> dict[str, float]:
    """PSNR (dB) and SSIM of the VAE's reconstructions (posterior mean, PNG-quantised) of the first `count` digits.

    Data range 1.0 on [0, 1] images. A VAE that cannot reconstruct digits caps what any UNet can draw.
    """
    images, _ = digits_as_images()
    originals = images_to_tensor(images[:count])
    decoded = vae.decode(vae.encode(originals * 2 - 1).latent_dist.mean).sample
    reconstructions = quantise_like_png((decoded + 1) / 2)
    return {"vae_reconstruction_psnr": psnr(reconstructions, originals), "vae_reconstruction_ssim": ssim(reconstructions, originals)}


def build_tiny_pipeline(folder: str | Path, seed: int = 0, vae_steps: int = 200, unet_pretrain_steps: int = 0) -> dict[str, float]:
    """Write the tiny base pipeline to `folder` (diffusers layout, safetensors); returns facts about it.

    Facts: VAE reconstruction MSE, PSNR, SSIM and scaling factor; with
    `unet_pretrain_steps` > 0 also the UNet pretraining loss, steps and CPU seconds.
    """
    tokenizer = build_caption_tokenizer(caption_words())
    text_encoder = build_text_encoder(len(tokenizer), seed)
    vae = build_vae()
    recon_mse = train_vae(vae, vae_steps, seed)
    facts = {"vae_reconstruction_mse": recon_mse, "vae_scaling_factor": vae.config.scaling_factor, **vae_reconstruction_quality(vae)}
    torch.manual_seed(seed + 1)
    unet = build_unet(cross_attention_dim=text_encoder.config.hidden_size)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    if unet_pretrain_steps > 0:
        facts.update(pretrain_unet(unet, vae, tokenizer, text_encoder, scheduler, unet_pretrain_steps, seed))
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_directory(folder) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
    return facts
