"""Load a Stable Diffusion (1.x/2.x or XL) pipeline from a folder or a hub id, one code path.

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
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase

from trainflow.config import looks_like_local_path
from trainflow.diffusion.model_families import ALL_PARTS, ModelFamily, detect_family, prompt_embeddings, tokenize
from trainflow.errors import MissingWeightsError

REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # every family's; sdxl adds its second pair


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

    patterns = ["model_index.json", *[f"{part}/*" for part in ALL_PARTS]]
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
    family: ModelFamily
    tokenizer: PreTrainedTokenizerBase
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    tokenizer_2: PreTrainedTokenizerBase | None = None  # sdxl's second tokenizer and text encoder
    text_encoder_2: CLIPTextModelWithProjection | None = None

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]


def load_pipeline_parts(folder: Path, unet_folder: Path | None = None, family: ModelFamily | None = None) -> PipelineParts:
    """Load the parts training and evaluation need (the UNet optionally from elsewhere), as the family has them."""
    family = family or detect_family(folder)
    for part in family.parts:
        if not (folder / part).is_dir():
            raise MissingWeightsError(f"{folder / part} is missing; a {family.pipeline_class} base needs "
                                      f"{', '.join(family.parts)}")
    second = family.name == "sdxl"
    return PipelineParts(
        folder=folder, family=family,
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        vae=AutoencoderKL.from_pretrained(folder / "vae").eval(),
        unet=UNet2DConditionModel.from_pretrained(unet_folder or folder / "unet"),
        noise_scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"),
        tokenizer_2=AutoTokenizer.from_pretrained(folder / "tokenizer_2") if second else None,
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval() if second else None,
    )


def tokenize_captions(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length, as Stable Diffusion does."""
    return tokenize(tokenizer, captions)


@torch.no_grad()
def encode_captions(parts: PipelineParts, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled embedding or None) of the padded captions, as the family's pipeline computes them."""
    ids = [tokenize(tokenizer, captions).to(device) for tokenizer in parts.tokenizers]
    return prompt_embeddings(parts.family, parts.text_encoders, ids)


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


def load_trained_parts(folder: Path) -> tuple[UNet2DConditionModel, list[torch.nn.Module] | None]:
    """The UNet of a model folder (with its LoRA adapter applied, if it has one) and its text encoders
    when they differ from the cached embeddings' (trained, or adapted by LoRA); else None."""
    from trainflow.diffusion.lora import LORA_WEIGHTS_FILE

    folder = Path(folder)
    family = detect_family(folder)
    if (folder / LORA_WEIGHTS_FILE).is_file():
        pipe = family.pipeline_type().from_pretrained(folder, **family.pipeline_options())
        pipe.load_lora_weights(folder)
        encoders = [getattr(pipe, part) for part in family.text_encoders]
        adapted_text = any("lora" in name for encoder in encoders for name, _ in encoder.named_parameters())
        return pipe.unet, encoders if adapted_text else None
    record = folder / "trainflow_training.json"
    trained_text = record.is_file() and json.loads(record.read_text()).get("train_config", {}).get("diffusion", {}).get("train_text_encoder", False)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    if not trained_text:
        return unet, None
    classes = (CLIPTextModel, CLIPTextModelWithProjection)
    return unet, [cls.from_pretrained(folder / part) for cls, part in zip(classes, family.text_encoders)]
