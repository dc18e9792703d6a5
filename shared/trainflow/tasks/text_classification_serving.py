"""What a registered text classifier takes and returns: a `text` column of strings in, named class probabilities out.

The output is the table classifiers' (trainflow.tasks.supervised_serving.classification_frame): the
predicted class and one `probability_<class>` column per class. Texts are tokenized and truncated as
the training cache was (the folder keeps its tokenizer and max_length) and scored in batches, so a long
request never pads every text to the longest one at once.
"""

from __future__ import annotations

from typing import Any

import torch

from trainflow.errors import UserFacingError
from trainflow.tasks.definition import ServingSchema

TEXT_COLUMN = "text"
EXAMPLE_TEXT = "an example text to classify"
BATCH_SIZE = 64


def text_classification_schema(class_names: list[str]) -> ServingSchema:
    import pandas as pd

    outputs = {"predicted_class": "string", **{f"probability_{name}": "double" for name in class_names}}
    return ServingSchema(inputs={TEXT_COLUMN: "string"}, outputs=outputs, params={},
                         example=pd.DataFrame({TEXT_COLUMN: [EXAMPLE_TEXT]}))


def request_texts(model_input: Any) -> list[str]:
    """The request's texts, one per row; UserFacingError naming the row of a missing or non-string value."""
    import pandas as pd

    try:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    except (TypeError, ValueError) as error:
        raise UserFacingError(f"the request is not a table ({error}); send a `{TEXT_COLUMN}` column with one text "
                              "per row") from None
    if TEXT_COLUMN not in frame.columns or frame.empty:
        raise UserFacingError(f"the request holds no texts; send a `{TEXT_COLUMN}` column with one text per row")
    texts = frame[TEXT_COLUMN].tolist()
    for row, text in enumerate(texts):
        if text is None or (isinstance(text, float) and text != text):  # None, or NaN as pandas fills one in
            raise UserFacingError(f"row {row} of the `{TEXT_COLUMN}` column is missing; send one string per row")
        if not isinstance(text, str):
            raise UserFacingError(f"row {row} of the `{TEXT_COLUMN}` column holds {text!r} "
                                  f"({type(text).__name__}), not a text; send one string per row")
    return texts


def serve_texts(predictor: Any, model_input: Any, params: dict[str, Any]):
    from trainflow.tasks.supervised_serving import classification_frame

    unknown = sorted(key for key, value in params.items() if value is not None)
    if unknown:
        raise UserFacingError(f"unknown parameter(s) {', '.join(unknown)}; this model takes none")
    texts = request_texts(model_input)
    probabilities = torch.cat([predictor.predict(texts[start:start + BATCH_SIZE])
                               for start in range(0, len(texts), BATCH_SIZE)])
    return classification_frame(probabilities, predictor.names)
