"""Load a Stable-Diffusion-architecture pipeline from a folder or a hub id, one code path.

A hub id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5') is resolved to a
folder in the Hugging Face cache (HF_HOME); with HF_HUB_OFFLINE=1 nothing is
downloaded. Everything downstream only ever sees a local folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from trainflow.config import looks_like_local_path
from trainflow.errors import MissingWeightsError

REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve_pipeline_folder(base: str, revision: str | None = None) -> Path:
    """Return the local folder of a diffusers pipeline, or raise MissingWeightsError saying how to get it."""
    if looks_like_local_path(base):
        folder = Path(base).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise MissingWeightsError(
                f"{folder / 'model_index.json'} is missing; model.base must be a diffusers pipeline folder "
                "(written by save_pretrained) or a hub id"
            )
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["model_index.json", *[f"{part}/*" for part in REQUIRED_PARTS]]
    try:
        return Path(snapshot_download(base, revision=revision, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise MissingWeightsError(_not_cached_message(base))
    try:
        return Path(snapshot_download(base, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # any hub/network failure ends the same way for the user
        raise MissingWeightsError(f"{_not_cached_message(base)} (download failed: {type(exc).__name__})") from None


def _not_cached_message(base: str) -> str:
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"model '{base}' is not in the Hugging Face cache under HF_HOME={home}; download it where the hub is "
        f"reachable (`hf download {base}`) and copy the cache there, or set model.base to a local pipeline folder"
    )


@dataclasses.dataclass
class PipelineParts:
    folder: Path
    tokenizer: PreTrainedTokenizerBase
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler


def load_pipeline_parts(folder: Path, unet_folder: Path | None = None) -> PipelineParts:
    """Load the five parts training and evaluation need (the UNet optionally from elsewhere)."""
    for part in REQUIRED_PARTS:
        if not (folder / part).is_dir():
            raise MissingWeightsError(f"{folder / part} is missing; the base pipeline needs {', '.join(REQUIRED_PARTS)}")
    return PipelineParts(
        folder=folder,
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
        unet=UNet2DConditionModel.from_pretrained(unet_folder or folder / "unet"),
        noise_scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"),
    )


def tokenize_captions(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length, as Stable Diffusion does."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """CLIP last hidden states of the padded captions."""
    return text_encoder(tokenize_captions(tokenizer, captions).to(device))[0]


def copy_pipeline_parts(base_folder: Path, destination: Path, replaced: tuple[str, ...] = ()) -> None:
    """Copy the base pipeline's parts into `destination`, except those in `replaced` (written by the caller).

    Only parts named in model_index.json are copied, so stray files in a hub
    snapshot (full .ckpt exports, say) do not bloat the model artifact.
    """
    index = json.loads((base_folder / "model_index.json").read_text())
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base_folder / "model_index.json", destination / "model_index.json")
    for part, spec in index.items():
        if part.startswith("_") or not isinstance(spec, list) or spec[0] is None or part in replaced:
            continue
        if (base_folder / part).is_dir():
            shutil.copytree(base_folder / part, destination / part, symlinks=False, dirs_exist_ok=True)


def load_trained_parts(folder: Path) -> tuple[UNet2DConditionModel, CLIPTextModel | None]:
    """The UNet of a model folder (with its LoRA adapter applied, if it has one) and its text encoder
    when it differs from the cached embeddings' (trained, or adapted by LoRA); else None."""
    from diffusers import StableDiffusionPipeline

    from trainflow.diffusion.lora import LORA_WEIGHTS_FILE

    folder = Path(folder)
    if (folder / LORA_WEIGHTS_FILE).is_file():
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(folder)
        adapted_text = any("lora" in name for name, _ in pipe.text_encoder.named_parameters())
        return pipe.unet, pipe.text_encoder if adapted_text else None
    record = folder / "trainflow_training.json"
    trained_text = record.is_file() and json.loads(record.read_text()).get("train_config", {}).get("diffusion", {}).get("train_text_encoder", False)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    return unet, CLIPTextModel.from_pretrained(folder / "text_encoder") if trained_text else None
