"""Which diffusers architecture a base pipeline is, and what differs between the families trainflow trains.

    sd     StableDiffusionPipeline (SD 1.x / 2.x): one CLIP text encoder; the UNet reads its last hidden state.
    sdxl   StableDiffusionXLPipeline: two CLIP text encoders; the UNet reads both penultimate hidden states
           (concatenated), the second encoder's pooled projection, and six "time ids" per image:
           original (height, width), crop (top, left) and target (height, width) (Podell et al., 2023, §2.2).

The family is read from the base's model_index.json (`_class_name`), never guessed from file names. Everything
here reads JSON or runs the encoders it is handed (no diffusers or torch import at module level, so config
checks and preflight can call it); loading weights is trainflow.diffusion.model_loading's job.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from trainflow.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where tensors are made, so config checks and preflight stay light
    import torch

FAMILY_NAMES = ("sd", "sdxl")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    name: str
    pipeline_class: str  # diffusers' class, as model_index.json names it
    description: str
    text_encoders: tuple[str, ...]  # pipeline folder parts, in the order the UNet's embedding concatenates them
    tokenizers: tuple[str, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        return ("unet", "vae", *self.text_encoders, *self.tokenizers, "scheduler")

    @property
    def takes_time_ids(self) -> bool:
        return self.name == "sdxl"

    def pipeline_type(self):
        """The stock diffusers pipeline class that loads this family's folders."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.name == "sdxl" else StableDiffusionPipeline

    def pipeline_options(self) -> dict:
        """from_pretrained options that keep generated images exactly the model's (no safety filter, no watermark)."""
        if self.name == "sdxl":
            return {"add_watermarker": False}
        return {"safety_checker": None, "requires_safety_checker": False}


SD = ModelFamily("sd", "StableDiffusionPipeline", "Stable Diffusion 1.x/2.x", ("text_encoder",), ("tokenizer",))
SDXL = ModelFamily("sdxl", "StableDiffusionXLPipeline", "Stable Diffusion XL",
                   ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2"))
FAMILIES = {family.name: family for family in (SD, SDXL)}
FAMILY_BY_PIPELINE = {family.pipeline_class: family for family in (SD, SDXL)}
# Every part either family loads: what a hub snapshot must hold (patterns that match nothing are harmless).
ALL_PARTS = tuple(dict.fromkeys(SD.parts + SDXL.parts))


def detect_family(folder: Path, declared: str = "auto") -> ModelFamily:
    """The family of the pipeline in `folder`, checked against `model.family` when it names one.

    ConfigError (one sentence naming the field) when model_index.json names another pipeline class, or when
    the declared family is not the base's (an SDXL config on an SD 1.5 base, or the reverse).
    """
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"model.base: {index} is missing or not JSON; model.base must be a diffusers pipeline "
                          "folder (written by save_pretrained) or a hub id") from None
    family = FAMILY_BY_PIPELINE.get(class_name)
    if family is None:
        known = " or ".join(f"{f.pipeline_class} ({f.description})" for f in FAMILIES.values())
        raise ConfigError(f"model.base: {folder} is a {class_name!r} pipeline; trainflow fine-tunes {known}")
    if declared not in ("auto", family.name):
        raise ConfigError(f"model.family: the config says {declared!r} ({FAMILIES[declared].description}) but model.base "
                          f"{folder} is {family.name!r} ({class_name}); set model.family to {family.name!r} or auto, "
                          "or point model.base at a matching pipeline")
    return family


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length, as the stock pipelines do."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def prompt_embeddings(family: ModelFamily, encoders: list, token_ids: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states the UNet cross-attends to, pooled embedding or None), as the family's pipeline computes them.

    sd: the text encoder's last hidden state. sdxl: both encoders' penultimate hidden states concatenated,
    and the second encoder's projected pooled output (StableDiffusionXLPipeline.encode_prompt, clip_skip None).
    """
    import torch

    if family.name == "sd":
        return encoders[0](token_ids[0])[0], None
    states, pooled = [], None
    for encoder, ids in zip(encoders, token_ids):
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
        if output[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds come first
            pooled = output[0]
    return torch.cat(states, dim=-1), pooled


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> list[float]:
    """SDXL's six size conditioning numbers: original (h, w), crop (top, left), target (h, w)."""
    return [float(v) for v in (*original_size, *crop_top_left, *target_size)]
