"""Validation prompts during text-to-image training (`train.validation_prompts`): images and their scores.

Each prompt is drawn with its own fixed seed (prompt i: seed + i, through diffusion.generation's
generate_images, the score stage's generator) at step 0 and every `train.validation_prompts_every` steps,
so successive grids differ only by training. The pipeline is the family's stock one (SD or SDXL) around
the UNet being trained, with the base's VAE, tokenizers and text encoders (the trained encoders when
train.diffusion.train_text_encoder is on). Scores, when their scorer is configured
(train.validation_prompt_scoring): prompt accuracy (the classifier reads the class the prompt names) and
CLIP score; a scorer that cannot be loaded is reported once and its metric is not logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from trainflow.config.training import PromptScoringConfig, TrainConfig
from trainflow.diffusion.model_families import ModelFamily
from trainflow.errors import UserFacingError
from trainflow.training.prompt_samples import PromptSamples

PROMPT_SEED_OFFSET = 4_000_003  # prompt images differ from the test and validation noise
SAMPLE_STEPS = 10  # a few deterministic DDIM steps: the grids show progress, not final quality
SAMPLE_GUIDANCE_SCALE = 5.0
PROMPT_METRICS = {"val_prompt_accuracy": "prompt_classifier", "val_clip_score": "clip_model"}


def prompt_labels(prompts: list[str], class_names: list[str]) -> list[int] | str:
    """The class each prompt names (the one class name it contains as a whole word, any case), or why not."""
    labels = []
    for prompt in prompts:
        named = [index for index, name in enumerate(class_names)
                 if re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", prompt.lower())]
        if len(named) != 1:
            found = ", ".join(class_names[i] for i in named) or "none"
            return (f"validation prompt {prompt!r} names {len(named)} of the classifier's classes ({found}); "
                    "each prompt must name exactly one")
        labels.append(named[0])
    return labels


def check_prompt_monitor(train: TrainConfig) -> None:
    """ValueError naming the field when early stopping monitors a validation-prompt metric that cannot be measured."""
    monitor = train.early_stopping.monitor
    if train.validation_prompts is None:
        if monitor in PROMPT_METRICS:
            raise ValueError(f"train.early_stopping.monitor: {monitor} is measured on train.validation_prompts, "
                             "which are not set; add prompts or monitor val_loss")
        return
    if monitor not in PROMPT_METRICS:
        return
    scorer = PROMPT_METRICS[monitor]
    if not getattr(train.validation_prompt_scoring, scorer):
        raise ValueError(f"train.early_stopping.monitor: {monitor} cannot be scored without "
                         f"train.validation_prompt_scoring.{scorer}; set it or monitor val_loss")
    every, validation = train.validation_prompts_every, train.validation
    if every is not None and (validation.every_epoch or not validation.every_n_steps or validation.every_n_steps % every):
        raise ValueError(f"train.validation_prompts_every: early stopping on {monitor} needs the prompts drawn at "
                         "every validation; leave validation_prompts_every unset (draw at each validation), or set "
                         "validation.every_epoch false and validation.every_n_steps to a multiple of it")


def check_prompt_classifier(train: TrainConfig) -> None:
    """At config load: with prompt accuracy monitored, every prompt must name one of the classifier's classes."""
    import json

    folder = train.validation_prompt_scoring.prompt_classifier
    if train.early_stopping.monitor != "val_prompt_accuracy" or not folder or train.validation_prompts is None:
        return
    config_file = Path(folder).expanduser() / "config.json"
    try:
        class_names = list(json.loads(config_file.read_text())["class_names"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserFacingError(f"train.validation_prompt_scoring.prompt_classifier: {config_file} is not a trainflow "
                              "classifier's config (with class_names); point at a classifier folder") from None
    labels = prompt_labels(train.validation_prompts, class_names)
    if isinstance(labels, str):
        raise UserFacingError(f"train.validation_prompts: {labels} for val_prompt_accuracy")


class ValidationPromptSampler:
    """`prompt_samples(model)` of the text-to-image task: the prompts' images from the current weights, scored."""

    def __init__(self, base_folder: Path, family: ModelFamily, scheduler_config: Any, prompts: list[str],
                 scoring: PromptScoringConfig, seed: int, latent_size: tuple[int, int]) -> None:
        self.base_folder, self.family, self.scheduler_config = Path(base_folder), family, scheduler_config
        self.prompts, self.scoring, self.seed, self.latent_size = prompts, scoring, seed, latent_size
        self._pipe = None
        self._scorers: dict[str, Callable[[torch.Tensor], float]] | None = None

    def _pipeline(self, model) -> Any:
        from diffusers import DDIMScheduler

        if self._pipe is None or self._pipe.unet is not model.unet:
            trained = dict(zip(self.family.text_encoders, model.text_encoders))
            self._pipe = self.family.pipeline_type().from_pretrained(
                self.base_folder, unet=model.unet, scheduler=DDIMScheduler.from_config(self.scheduler_config),
                **trained, **self.family.pipeline_options())
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe.to(next(model.unet.parameters()).device)

    def _build_scorers(self, device: torch.device) -> dict[str, Callable[[torch.Tensor], float]]:
        from trainflow.metrics import generation_metrics as gm
        from trainflow.metrics.weights import hf_model_folder
        from trainflow.models.image_classifier import load_classifier

        scorers: dict[str, Callable[[torch.Tensor], float]] = {}
        try:
            if self.scoring.prompt_classifier:
                classifier = load_classifier(self.scoring.prompt_classifier).to(device)
                labels = prompt_labels(self.prompts, classifier.class_names)
                if isinstance(labels, str):
                    print(f"train: val_prompt_accuracy not tracked: {labels}", flush=True)
                else:
                    scorers["prompt_accuracy"] = lambda images: float(gm.prompt_hits(classifier, images, torch.tensor(labels)).mean())
            if self.scoring.clip_model:
                metric = gm.load_clip_score(hf_model_folder(self.scoring.clip_model), device)
                scorers["clip_score"] = lambda images: gm.clip_score(metric, images, self.prompts)
        except UserFacingError as error:  # missing or unreadable weights of an optional scorer
            print(f"train: a validation prompt score is not tracked: {error}", flush=True)
        return scorers

    @torch.no_grad()
    def __call__(self, model) -> PromptSamples:
        from trainflow.diffusion.generation import generate_images
        from trainflow.metrics.image_quality import quantise_like_png

        pipe = self._pipeline(model)
        height, width = (side * pipe.vae_scale_factor for side in self.latent_size)
        images = quantise_like_png(generate_images(
            pipe, self.prompts, height, SAMPLE_STEPS, SAMPLE_GUIDANCE_SCALE, len(self.prompts),
            self.seed + PROMPT_SEED_OFFSET, label="validation prompts", sizes=[(height, width)] * len(self.prompts)))
        if self._scorers is None:
            self._scorers = self._build_scorers(pipe.device)
        metrics = {name: score(images) for name, score in self._scorers.items()}
        return PromptSamples(images, metrics, list(self.prompts))
