"""What a registered supervised model takes and returns: feature rows or image arrays in, readable predictions out.

A table model takes a DataFrame with one column per feature (the names it was trained on); an image
model takes float32 arrays (N, 3, H, W) with values in [0, 1], as the cache feeds training. The
example input is the training split's mean (a table row or an image), which the model folder keeps
as its input normalisation, so it is a real input of the right shape without shipping any record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainflow.errors import UserFacingError
from trainflow.tasks.definition import ServingSchema, ServingTensor


def read_folder_config(folder: Path) -> dict[str, Any]:
    """The model folder's config.json (build arguments and meta); UserFacingError when it is missing or not JSON."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserFacingError(f"{path} cannot be read ({error}); point at a model folder written by trainflow") from None


def supervised_input(folder: Path) -> tuple[dict[str, str] | ServingTensor, Any]:
    """(input description, example) for the supervised model in `folder`."""
    config = read_folder_config(folder)
    build, meta = config["build"], config.get("meta") or {}
    mean = np.asarray(build["input_mean"], dtype=np.float32)
    if meta.get("kind") == "table":
        import pandas as pd

        names = list(meta["feature_names"])
        return {name: "double" for name in names}, pd.DataFrame([dict(zip(names, mean.astype(float).tolist()))])
    size = build.get("resolution") or -1
    channels = build.get("in_channels") or len(mean)
    shape = (-1, channels, size, size)
    example_size = size if size > 0 else 8
    example = np.broadcast_to(mean.reshape(1, -1, 1, 1), (1, channels, example_size, example_size)).copy()
    return ServingTensor("float32", shape), example


def supervised_schema(folder: Path, outputs: dict[str, str] | ServingTensor) -> ServingSchema:
    inputs, example = supervised_input(folder)
    return ServingSchema(inputs=inputs, outputs=outputs, params={}, example=example)


def input_tensor(predictor: Any, model_input: Any) -> torch.Tensor:
    """The request as the model's input tensor; UserFacingError naming what is missing or malformed."""
    meta = predictor.meta
    if meta.get("kind") == "table":
        import pandas as pd

        names = list(meta["feature_names"])
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [name for name in names if name not in model_input.columns]
        if missing:
            raise UserFacingError(f"the request lacks feature column(s) {', '.join(missing)}; send one column per "
                                  f"feature: {', '.join(names)}")
        try:
            values = model_input[names].to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise UserFacingError(f"the feature columns must hold numbers ({error})") from None
        if not np.isfinite(values).all():
            raise UserFacingError("the request holds a missing or infinite feature value; send finite numbers")
        return torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy
    channels = predictor.model.build_config.get("in_channels") or 3
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise UserFacingError(f"the request is not an array of numbers ({error})") from None
    if array.ndim != 4 or array.shape[1] != channels:
        raise UserFacingError(f"the request is an array of shape {array.shape}; send images as float32 "
                              f"(N, {channels}, H, W) with values in [0, 1]")
    return torch.from_numpy(array)


def classification_frame(probabilities: torch.Tensor, names: list[str]):
    """One row per input: the predicted class name and a probability column per class."""
    import pandas as pd

    values = probabilities.double().numpy()
    frame = pd.DataFrame({"predicted_class": [names[i] for i in values.argmax(1)]})
    for index, name in enumerate(names):
        frame[f"probability_{name}"] = values[:, index]
    return frame


def regression_frame(predictions: torch.Tensor, names: list[str]):
    """One row per input, one column per target, in the targets' units."""
    import pandas as pd

    return pd.DataFrame(predictions.double().numpy(), columns=names)
