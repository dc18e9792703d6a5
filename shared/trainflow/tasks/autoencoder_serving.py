"""What a registered autoencoder takes and returns: float32 images in, each one's reconstruction error out.

A request is an array (N, 3, R, R) with values in [0, 1], R the size the model was trained at (its
folder's build config). The answer has one row per image: `reconstruction_mse`, the mean squared error
of its reconstruction (the anomaly score: the higher, the less the image looks like what the model was
trained on), and with the request parameter `return_reconstruction` also `reconstruction_png_base64`,
the reconstruction as base64 PNG text (8 bits per channel). The example input is a mid-grey image of
the model's size, a real input without shipping any record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.tasks.definition import ServingSchema, ServingTensor

SCORE_COLUMN = "reconstruction_mse"
RECONSTRUCTION_COLUMN = "reconstruction_png_base64"
PARAMS = {"return_reconstruction": False}
BATCH_SIZE = 64


def autoencoder_build(folder: Path) -> dict[str, Any]:
    """The folder's build arguments (in_channels, resolution, ...); UserFacingError when config.json does not give them."""
    path = Path(folder) / "config.json"
    try:
        build = json.loads(path.read_text())["build"]
        return {"in_channels": int(build["in_channels"]), "resolution": int(build["resolution"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise UserFacingError(f"{path} does not give the autoencoder's image size ({type(error).__name__}: {error}); "
                              "point at a model folder from a trainflow autoencoder run") from None


def autoencoder_schema(folder: Path) -> ServingSchema:
    build = autoencoder_build(folder)
    channels, size = build["in_channels"], build["resolution"]
    example = np.full((1, channels, size, size), 0.5, dtype=np.float32)
    return ServingSchema(inputs=ServingTensor("float32", (-1, channels, size, size)),
                         outputs={SCORE_COLUMN: "double", RECONSTRUCTION_COLUMN: "string"}, params=dict(PARAMS),
                         example=example, optional_outputs=frozenset({RECONSTRUCTION_COLUMN}))


def request_images(predictor: Any, model_input: Any) -> torch.Tensor:
    """The request as a float tensor (N, C, R, R) in [0, 1]; UserFacingError saying what the model takes."""
    build = predictor.model.build_config
    channels, size = build["in_channels"], build["resolution"]
    wanted = f"send images as float32 (N, {channels}, {size}, {size}) with values in [0, 1]"
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise UserFacingError(f"the request is not an array of numbers ({error}); {wanted}") from None
    if array.ndim != 4 or array.shape[1:] != (channels, size, size) or not len(array):
        raise UserFacingError(f"the request is an array of shape {array.shape}; {wanted}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise UserFacingError(f"the request holds values outside [0, 1] or not finite (from {np.nanmin(array):g} to "
                              f"{np.nanmax(array):g}); {wanted}, e.g. 8-bit pixels divided by 255")
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy


def serve_images(predictor: Any, model_input: Any, params: dict[str, Any]):
    import pandas as pd

    from trainflow.tasks.text_to_image_serving import png_base64

    settings = {**PARAMS, **{key: value for key, value in params.items() if value is not None}}
    unknown = sorted(set(settings) - set(PARAMS))
    if unknown:
        raise UserFacingError(f"unknown parameter(s) {', '.join(unknown)}; this model takes {', '.join(PARAMS)}")
    if not isinstance(settings["return_reconstruction"], (bool, np.bool_)):
        raise UserFacingError(f"return_reconstruction must be true or false, not {settings['return_reconstruction']!r}")
    images = request_images(predictor, model_input)
    scores, pictures = [], []
    for start in range(0, len(images), BATCH_SIZE):
        batch = images[start:start + BATCH_SIZE]
        reconstructions = predictor.predict(batch)
        scores.append((reconstructions - batch).pow(2).flatten(1).mean(1).double())
        if settings["return_reconstruction"]:
            pictures.extend(png_base64(picture) for picture in reconstructions)
    frame = pd.DataFrame({SCORE_COLUMN: torch.cat(scores).numpy()})
    if settings["return_reconstruction"]:
        frame[RECONSTRUCTION_COLUMN] = pictures
    return frame
