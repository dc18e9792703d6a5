"""What a registered text-to-image model takes and returns: prompts in, PNG images (base64 text) out.

A request is a DataFrame with a `prompt` column; seed, steps, guidance scale and resolution are
request parameters with the defaults below (image i uses seed + i, as everywhere in trainflow).
The default resolution is the one the model folder's UNet and VAE were built for.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.tasks.definition import ServingSchema

IMAGE_COLUMN = "image_png_base64"
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5
EXAMPLE_PROMPT = "a photo of a cat"
EXAMPLE_STEPS = 2  # MLflow runs the example when it logs the model: a cheap request of the same shape


def native_resolution(folder: Path) -> int:
    """The image size the folder's UNet works at: its latent sample size times the VAE's downscaling."""
    try:
        unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
        vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise UserFacingError(f"{folder}: unet/config.json and vae/config.json do not give the model's image size "
                              f"({error}); point at a complete diffusers pipeline folder") from None


def text_to_image_schema(folder: Path) -> ServingSchema:
    params = {"seed": 0, "num_inference_steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE,
              "resolution": native_resolution(folder)}
    import pandas as pd

    return ServingSchema(inputs={"prompt": "string"}, outputs={IMAGE_COLUMN: "string"}, params=params,
                         example=(pd.DataFrame({"prompt": [EXAMPLE_PROMPT]}), {"num_inference_steps": EXAMPLE_STEPS}))


def png_base64(image: torch.Tensor) -> str:
    """A (3, H, W) float image in [0, 1] as base64 PNG text."""
    from PIL import Image

    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def serve_prompts(predictor: Any, model_input: Any, params: dict[str, Any], defaults: dict[str, Any]):
    """One PNG (base64) per prompt; UserFacingError for a request without prompts or with bad parameters."""
    import pandas as pd

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if "prompt" not in frame.columns or frame.empty:
        raise UserFacingError("the request holds no prompts; send a `prompt` column with one prompt per image")
    settings = {**defaults, **{key: value for key, value in params.items() if value is not None}}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise UserFacingError(f"unknown parameter(s) {', '.join(unknown)}; this model takes {', '.join(defaults)}")
    steps, resolution = int(settings["num_inference_steps"]), int(settings["resolution"])
    if steps < 1 or resolution < 8 or resolution % 8:
        raise UserFacingError(f"num_inference_steps must be at least 1 and resolution a multiple of 8 (got {steps} "
                              f"and {resolution})")
    images = predictor.predict([str(p) for p in frame["prompt"]], resolution=resolution, steps=steps,
                               guidance_scale=float(settings["guidance_scale"]), seed=int(settings["seed"]))
    return pd.DataFrame({IMAGE_COLUMN: [png_base64(image) for image in images]})
