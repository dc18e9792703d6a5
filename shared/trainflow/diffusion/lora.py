"""LoRA adapters on the UNet through peft, exported so stock diffusers loads them.

The adapter is saved with `StableDiffusionPipeline.save_lora_weights` (one
safetensors file in the model folder), so the artifact loads with
`StableDiffusionPipeline.from_pretrained(folder)` then `load_lora_weights(folder)`.
With `merge`, the adapter is fused into a full UNet through the same stock path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict

from trainflow.config import LoraConfig
from trainflow.errors import ConfigError

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def add_lora(unet: torch.nn.Module, cfg: LoraConfig, text_encoder: torch.nn.Module | None = None) -> None:
    """Freeze the UNet and add trainable LoRA layers on `cfg.target_modules` (and on the text encoder's attention)."""
    names = [name for name, _ in unet.named_modules()]
    if not any(name == target or name.endswith("." + target) for target in cfg.target_modules for name in names):
        raise ConfigError(
            f"train.diffusion.lora.target_modules: none of {cfg.target_modules} exists in this UNet (it has no such "
            "attention projections); LoRA needs attention layers, e.g. to_q, to_k, to_v, to_out.0"
        )
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                                    init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))
    if text_encoder is not None:
        text_encoder.requires_grad_(False)
        text_encoder.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                                                init_lora_weights="gaussian",
                                                target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))


def save_lora_adapter(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> None:
    """Write the adapter as `folder/pytorch_lora_weights.safetensors`, in the layout stock diffusers loads.

    The peft configs travel in the file's metadata: without them `load_lora_weights`
    assumes alpha = rank, and an adapter trained with another alpha loads at the wrong scale.
    """
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)) if text_encoder is not None else None
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict() if text_encoder is not None else None,
    )


def merged_unet_folder(base_folder: Path, unet: torch.nn.Module, text_encoder, destination: Path) -> None:
    """Fuse the adapter into the base weights through stock diffusers and save the merged parts."""
    with tempfile.TemporaryDirectory() as adapter_dir:
        save_lora_adapter(Path(adapter_dir), unet, text_encoder)
        pipe = StableDiffusionPipeline.from_pretrained(base_folder, safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(adapter_dir)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        pipe.unet.save_pretrained(destination / "unet", safe_serialization=True)
        if text_encoder is not None:
            pipe.text_encoder.save_pretrained(destination / "text_encoder", safe_serialization=True)
