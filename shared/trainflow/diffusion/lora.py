"""LoRA adapters on the UNet through peft, exported so stock diffusers loads them.

The adapter is saved with the family's `save_lora_weights` (StableDiffusionPipeline's
or StableDiffusionXLPipeline's: one safetensors file in the model folder), so the
artifact loads with `<Pipeline>.from_pretrained(folder)` then `load_lora_weights(folder)`.
With `merge`, the adapter is fused into a full UNet through the same stock path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict

from trainflow.config import LoraConfig
from trainflow.diffusion.model_families import ModelFamily
from trainflow.errors import ConfigError

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def add_lora(unet: torch.nn.Module, cfg: LoraConfig, *text_encoders: torch.nn.Module) -> None:
    """Freeze the UNet and add trainable LoRA layers on `cfg.target_modules` (and on each text encoder's attention)."""
    names = [name for name, _ in unet.named_modules()]
    if not any(name == target or name.endswith("." + target) for target in cfg.target_modules for name in names):
        raise ConfigError(
            f"train.diffusion.lora.target_modules: none of {cfg.target_modules} exists in this UNet (it has no such "
            "attention projections); LoRA needs attention layers, e.g. to_q, to_k, to_v, to_out.0"
        )
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                                    init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))
    for text_encoder in text_encoders:
        text_encoder.requires_grad_(False)
        text_encoder.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, lora_dropout=cfg.dropout,
                                                init_lora_weights="gaussian",
                                                target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))


def save_lora_adapter(folder: Path, family: ModelFamily, unet: torch.nn.Module, *text_encoders: torch.nn.Module) -> None:
    """Write the adapter as `folder/pytorch_lora_weights.safetensors`, in the layout the family's stock pipeline loads.

    The peft configs travel in the file's metadata: without them `load_lora_weights`
    assumes alpha = rank, and an adapter trained with another alpha loads at the wrong scale.
    """
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
              "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    for part, encoder in zip(family.text_encoders, text_encoders):
        layers[f"{part}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
        layers[f"{part}_lora_adapter_metadata"] = encoder.peft_config["default"].to_dict()
    family.pipeline_type().save_lora_weights(folder, safe_serialization=True, **layers)


def merged_unet_folder(base_folder: Path, family: ModelFamily, unet: torch.nn.Module, text_encoders: list[torch.nn.Module],
                       destination: Path) -> None:
    """Fuse the adapter into the base weights through stock diffusers and save the merged parts."""
    with tempfile.TemporaryDirectory() as adapter_dir:
        save_lora_adapter(Path(adapter_dir), family, unet, *text_encoders)
        pipe = family.pipeline_type().from_pretrained(base_folder, **family.pipeline_options())
        pipe.load_lora_weights(adapter_dir)
        pipe.fuse_lora(components=["unet", *family.text_encoders[:len(text_encoders)]])
        pipe.unload_lora_weights()
        pipe.unet.save_pretrained(destination / "unet", safe_serialization=True)
        for part in family.text_encoders[:len(text_encoders)]:
            getattr(pipe, part).save_pretrained(destination / part, safe_serialization=True)
