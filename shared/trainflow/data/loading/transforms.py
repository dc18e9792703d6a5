"""Image transforms per split from `train.transforms`, with augmentation randomness keyed by record.

Train: resize (when asked), then the configured albumentations steps. Val and
test: the same deterministic resize only. Masks go through the same steps as
their image (albumentations moves them together, with nearest-neighbour
interpolation), so a flipped image keeps its labels under the right pixels.

Every random step is seeded from (run seed, epoch, record index, step number),
never from a worker's or the process's random state: which worker handles a
record, or whether the run was resumed mid-epoch, cannot change how it is
augmented. Each step gets its own seed because albumentations' Compose gives
all its steps the same one, which would make, e.g., two flips with p=0.5
always happen together.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Any, NamedTuple

import numpy as np

from trainflow.config.data_loading import TransformsConfig
from trainflow.errors import ConfigError


class SampleKey(NamedTuple):
    """What a batch sampler hands a dataset that augments: the record and where in the run it is drawn."""

    index: int
    epoch: int
    seed: int


def step_seed(key: SampleKey, step: int) -> int:
    """A 32-bit seed for one random step of one record's augmentation; a pure function of its inputs."""
    entropy = [key.seed & 0xFFFFFFFFFFFFFFFF, key.epoch, key.index, step]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _albumentations():
    # Albumentations asks PyPI for a newer version on import unless told not to; runs are offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


# Steps that change the pixel type: trainflow scales to [0, 1] itself and the model normalises.
OWN_STEPS = ("ToTensorV2", "ToTensor", "Normalize", "ToFloat", "FromFloat")


def _build_step(albumentations: Any, name: str, params: dict[str, Any], where: str) -> Any:
    if name in OWN_STEPS:
        raise ConfigError(f"{where}.name: leave out {name}; trainflow turns images into [0, 1] tensors itself and "
                          "the model normalises them with the train split's statistics")
    transform_class = getattr(albumentations, name, None)
    bases = (albumentations.BasicTransform, albumentations.BaseCompose)
    if not (isinstance(transform_class, type) and issubclass(transform_class, bases)):
        known = [n for n in dir(albumentations) if isinstance(getattr(albumentations, n), type)
                 and issubclass(getattr(albumentations, n), albumentations.BasicTransform)]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; use an albumentations transform class name such as HorizontalFlip"
        raise ConfigError(f"{where}.name: {name!r} is not an albumentations transform{hint}")
    accepted = inspect.signature(transform_class.__init__).parameters
    unknown = sorted(set(params) - set(accepted)) if not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()) else []
    if unknown:  # albumentations only warns about unknown arguments, and then ignores them
        raise ConfigError(f"{where}.params: {name} does not accept {', '.join(unknown)}; "
                          f"it takes {', '.join(k for k in accepted if k not in ('self', 'args', 'kwargs'))}")
    try:
        return transform_class(**params)
    except (TypeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{where}.params: {name} does not accept {params!r} ({first_line})") from None


class ImageTransform:
    """Applies a split's steps to one HWC uint8 image (and its HW mask); `random` says whether keys matter."""

    def __init__(self, steps: list[Any], random: bool) -> None:
        albumentations = _albumentations()
        self.pipeline = albumentations.Compose(steps)
        self.random = random

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, key: SampleKey) -> tuple[np.ndarray, np.ndarray | None]:
        if self.random:
            for number, step in enumerate(self.pipeline.transforms):
                step.set_random_seed(step_seed(key, number))
        if mask is None:
            return self.pipeline(image=image)["image"], None
        out = self.pipeline(image=image, mask=mask)
        return out["image"], out["mask"]


def build_image_transform(cfg: TransformsConfig | None, split: str, resolution: int | None) -> ImageTransform | None:
    """The transform for `split`, or None when the split's images pass through unchanged.

    resolution: the cache's image size (a resize to it is skipped). Raises
    ConfigError naming the step when a name or its arguments are wrong.
    """
    if cfg is None:
        return None
    augment = cfg.augment if split == "train" else []
    needs_resize = cfg.resize is not None and cfg.resize != resolution
    if not augment and not needs_resize:
        return None
    albumentations = _albumentations()
    steps = [albumentations.Resize(cfg.resize, cfg.resize)] if needs_resize else []
    steps += [_build_step(albumentations, step.name, step.params, f"train.transforms.augment[{number}]")
              for number, step in enumerate(augment)]
    return ImageTransform(steps, random=bool(augment))


def check_transforms(cfg: TransformsConfig) -> None:
    """Build every split's steps once, so a wrong name or argument fails before any data is read."""
    for split in ("train", "val", "test"):
        build_image_transform(cfg, split, None)
