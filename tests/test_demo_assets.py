"""The demo's base model: a VAE that reconstructs digits and a UNet pretrained on captions that never name the digit."""

from __future__ import annotations

import math

import torch

from trainflow.demo.digits_dataset import DIGIT_WORDS


def test_pretrain_caption_never_names_a_digit():
    from trainflow.demo.unet_pretraining import PRETRAIN_CAPTION

    assert not set(PRETRAIN_CAPTION.split()) & set(DIGIT_WORDS)


def test_base_pipeline_records_vae_quality_and_pretrains_the_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    from trainflow.demo.tiny_stable_diffusion import build_caption_tokenizer, build_text_encoder, build_unet, build_tiny_pipeline, caption_words

    facts = build_tiny_pipeline(tmp_path / "base", seed=0, vae_steps=3, unet_pretrain_steps=3)
    assert math.isfinite(facts["vae_reconstruction_psnr"]) and -1.0 <= facts["vae_reconstruction_ssim"] <= 1.0
    assert facts["unet_pretrain_steps"] == 3 and facts["unet_pretrain_cpu_seconds"] > 0
    assert math.isfinite(facts["unet_pretrain_loss"])

    # The saved UNet is the trained one, not the seeded random initialisation.
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "base", subfolder="unet")
    torch.manual_seed(1)
    random_unet = build_unet(cross_attention_dim=build_text_encoder(len(build_caption_tokenizer(caption_words())), 0).config.hidden_size)
    changed = [name for name, p in saved.state_dict().items() if not torch.equal(p, random_unet.state_dict()[name])]
    assert len(changed) > 10



def test_assets_are_built_with_a_fixed_thread_count_and_the_callers_count_is_restored():
    from trainflow.demo.assets import ASSET_BUILD_THREADS, fixed_torch_threads

    before = torch.get_num_threads()
    other = ASSET_BUILD_THREADS + 1 if before == ASSET_BUILD_THREADS else before
    torch.set_num_threads(other)
    try:
        with fixed_torch_threads(ASSET_BUILD_THREADS):
            assert torch.get_num_threads() == ASSET_BUILD_THREADS
        assert torch.get_num_threads() == other
        try:
            with fixed_torch_threads(ASSET_BUILD_THREADS):
                raise ValueError("build failed")
        except ValueError:
            pass
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
