"""text_classification, autoencoder and semi_supervised register as MLflow Models that predict in a fresh process.

Each model is a tiny one trained here in seconds (the tasks' own test settings); the three are registered in
one SQLite registry and loaded by `models:/NAME@champion` in one new interpreter, which also sends bad requests
(those tests are slow: the interpreter imports torch, MLflow and transformers). The serving forms' own checks run
without MLflow, fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import test_autoencoder_task as autoencoder_test  # noqa: E402
import test_semi_supervised_task as semi_test  # noqa: E402
import test_text_classification as text_test  # noqa: E402
from task_runs import digits_cache, train_here, write_request  # noqa: E402
from test_registered_models import fresh_python, register  # noqa: E402
from trainflow.artifacts import LocalArtifact  # noqa: E402
from trainflow.errors import UserFacingError  # noqa: E402
from trainflow.tasks import get_task  # noqa: E402

TOPICS = ["cooking", "sports", "weather"]

LOAD_AND_PREDICT = """
import base64, io, json, mlflow, numpy as np, pandas as pd
from PIL import Image

def refusal(model, request, params=None):
    try:
        model.predict(request, params=params)
    except Exception as error:
        return [type(error).__name__, str(error)]
    return None

def table(frame):
    return {'columns': list(frame.columns), 'rows': frame.to_dict('records')}

answer = {}
text = mlflow.pyfunc.load_model('models:/topics@champion')
answer['text'] = table(text.predict(pd.DataFrame({'text': ['storm wind rain thunder', 'bake oven flour sugar']})))
answer['text_example'] = table(text.predict(text.input_example))
answer['text_inputs'] = text.metadata.get_input_schema().input_names()
answer['text_without_column'] = refusal(text, pd.DataFrame({'words': ['rain']}))
answer['text_not_a_string'] = refusal(text, pd.DataFrame({'text': ['rain', None]}))

images = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
autoencoder = mlflow.pyfunc.load_model('models:/digits-autoencoder@champion')
answer['autoencoder_example'] = table(autoencoder.predict(autoencoder.input_example))
with_pictures = autoencoder.predict(images, params={'return_reconstruction': True})
answer['autoencoder'] = {'columns': list(with_pictures.columns), 'mse': with_pictures['reconstruction_mse'].tolist(),
                         'sizes': [Image.open(io.BytesIO(base64.b64decode(v))).size
                                   for v in with_pictures['reconstruction_png_base64']]}
answer['autoencoder_params'] = {p.name: p.default for p in autoencoder.metadata.signature.params}
answer['autoencoder_8_bit'] = refusal(autoencoder, images * 255)

semi = mlflow.pyfunc.load_model('models:/digits-semi@champion')
answer['semi'] = table(semi.predict(images))
answer['semi_example'] = table(semi.predict(semi.input_example))
print(json.dumps(answer))
"""


def one_sentence(refusal: list | None, error_type: str, text: str) -> None:
    assert refusal is not None, "the bad request was answered"
    kind, message = refusal
    assert kind == error_type and text in message and "\n" not in message.strip(), refusal


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained model folder per task (text: 3 epochs on 120 texts; digits: the tasks' own test runs)."""
    root = tmp_path_factory.mktemp("served-tasks")
    table = text_test.write_jsonl(root / "topics.jsonl", text_test.topic_rows())
    dataset, cache = LocalArtifact(str(root / "text-dataset")), LocalArtifact(str(root / "text-cache"))
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    ingest_split({"table": str(table), **text_test.INGEST}, 0, dataset, LocalArtifact(str(root / "ingest.md")),
                 task="text_classification")
    build_cache(dataset.path, text_test.MODEL, {}, cache, task="text_classification")
    runs = {
        "text_classification": (Path(cache.path), text_test.MODEL, text_test.TRAIN),
        "autoencoder": (digits_cache(root / "digits"), autoencoder_test.MODEL, autoencoder_test.TRAIN),
        "semi_supervised": (digits_cache(root / "semi-digits", unlabelled_every=5), semi_test.MODEL, semi_test.TRAIN),
    }
    for task, (task_cache, model, train) in runs.items():
        train_here(write_request(root / task, task, task_cache, model, train))
    return {task: root / task / "model" for task in runs}


@pytest.fixture(scope="module")
def served(tmp_path_factory, folders) -> dict:
    """The three folders registered as champions in one SQLite registry, then loaded and asked in one new interpreter."""
    root = tmp_path_factory.mktemp("served-registry")
    for name, task, metrics in (("topics", "text_classification", {"accuracy": 0.9}),
                                ("digits-autoencoder", "autoencoder", {"mse": 0.05}),
                                ("digits-semi", "semi_supervised", {"accuracy": 0.5})):
        outcome = register(str(folders[task]), root, name, task, {"content_sha256": "x"}, metrics)
        assert outcome["registered"] and outcome["promoted"], outcome
    return fresh_python(LOAD_AND_PREDICT, f"sqlite:///{root / 'mlflow.db'}", timeout=240)


@pytest.mark.slow  # shares one new interpreter that loads the three models: ~20 s on a busy 2-core machine
def test_a_registered_text_classifier_takes_a_text_column_and_returns_named_probabilities(served):
    assert served["text_inputs"] == ["text"]
    for answer in (served["text"], served["text_example"]):
        assert answer["columns"] == ["predicted_class"] + [f"probability_{name}" for name in TOPICS]
        for row in answer["rows"]:
            assert row["predicted_class"] in TOPICS
            assert sum(row[f"probability_{name}"] for name in TOPICS) == pytest.approx(1.0, abs=1e-6)
    assert [row["predicted_class"] for row in served["text"]["rows"]] == ["weather", "cooking"]


@pytest.mark.slow  # shares one new interpreter that loads the three models: ~20 s on a busy 2-core machine
def test_a_text_request_without_texts_or_with_a_missing_one_is_refused_in_one_sentence(served):
    assert served["text_without_column"] is not None and "text" in served["text_without_column"][1]
    one_sentence(served["text_not_a_string"], "UserFacingError", "row 1 of the `text` column is missing")


@pytest.mark.slow  # shares one new interpreter that loads the three models: ~20 s on a busy 2-core machine
def test_a_registered_autoencoder_scores_images_by_reconstruction_error_and_returns_pngs_on_request(served):
    assert served["autoencoder_example"]["columns"] == ["reconstruction_mse"]
    assert served["autoencoder"]["columns"] == ["reconstruction_mse", "reconstruction_png_base64"]
    assert all(0 < mse < 1 for mse in served["autoencoder"]["mse"])
    assert served["autoencoder"]["sizes"] == [[8, 8]] * 3
    assert served["autoencoder_params"] == {"return_reconstruction": False}
    one_sentence(served["autoencoder_8_bit"], "UserFacingError", "values outside [0, 1]")


@pytest.mark.slow  # shares one new interpreter that loads the three models: ~20 s on a busy 2-core machine
def test_a_registered_semi_supervised_model_serves_as_a_classifier(served):
    digits = [str(digit) for digit in range(10)]
    for answer in (served["semi"], served["semi_example"]):
        assert answer["columns"] == ["predicted_class"] + [f"probability_{digit}" for digit in digits]
        for row in answer["rows"]:
            assert row["predicted_class"] in digits
            assert sum(row[f"probability_{digit}"] for digit in digits) == pytest.approx(1.0, abs=1e-6)
    assert len(served["semi"]["rows"]) == 3


def test_the_autoencoder_schema_says_the_trained_size_and_serve_refuses_another_in_one_sentence(folders):
    definition = get_task("autoencoder")
    schema = definition.serving_schema(folders["autoencoder"])
    assert schema.inputs.shape == (-1, 3, 8, 8) and schema.example.shape == (1, 3, 8, 8)
    assert schema.optional_outputs == {"reconstruction_png_base64"}
    predictor = definition.load_for_prediction(folders["autoencoder"])
    expected = predictor.anomaly_scores(torch.full((1, 3, 8, 8), 0.5)).double().numpy()
    np.testing.assert_allclose(definition.serve(predictor, schema.example, {})["reconstruction_mse"], expected, rtol=1e-6)
    with pytest.raises(UserFacingError, match=r"shape \(2, 3, 4, 4\); send images as float32 \(N, 3, 8, 8\)"):
        definition.serve(predictor, np.zeros((2, 3, 4, 4), "float32"), {})
    with pytest.raises(UserFacingError, match="unknown parameter"):
        definition.serve(predictor, schema.example, {"threshold": 0.1})


@pytest.mark.parametrize("request_input", [
    {"words": ["rain"]}, {"text": []}, {"text": ["rain", 3]}, {"text": [float("nan")]}])
def test_a_bad_text_request_is_one_sentence(folders, request_input):
    import pandas as pd

    definition = get_task("text_classification")
    predictor = definition.load_for_prediction(folders["text_classification"])
    with pytest.raises(UserFacingError) as refused:
        definition.serve(predictor, pd.DataFrame(request_input), {})
    assert "\n" not in str(refused.value) and "text" in str(refused.value)


def test_the_text_schema_names_the_classes_and_serve_answers_in_batches(folders, monkeypatch):
    import pandas as pd

    from trainflow.tasks import text_classification_serving

    definition = get_task("text_classification")
    schema = definition.serving_schema(folders["text_classification"])
    assert schema.inputs == {"text": "string"} and list(schema.example.columns) == ["text"]
    assert list(schema.outputs) == ["predicted_class"] + [f"probability_{name}" for name in TOPICS]
    predictor = definition.load_for_prediction(folders["text_classification"])
    texts = ["storm wind rain thunder", "bake oven flour sugar", "goal match referee striker", ""]
    whole = definition.serve(predictor, pd.DataFrame({"text": texts}), {})
    monkeypatch.setattr(text_classification_serving, "BATCH_SIZE", 3)  # a request longer than one batch
    batched = definition.serve(predictor, pd.DataFrame({"text": texts}), {})
    assert list(whole.columns) == list(schema.outputs) and len(whole) == 4
    pd.testing.assert_frame_equal(whole, batched, atol=1e-6)


CELLS = st.one_of(st.text(max_size=20), st.none(), st.integers(), st.floats(allow_nan=True), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(CELLS, max_size=6))
def test_any_text_column_gives_its_texts_or_one_sentence_naming_the_row(cells):
    import pandas as pd

    from trainflow.tasks.text_classification_serving import request_texts

    try:
        texts = request_texts(pd.DataFrame({"text": pd.Series(cells, dtype=object)}))
    except UserFacingError as refused:
        message = str(refused)
        assert "\n" not in message and ("row " in message or "holds no texts" in message)
        return
    assert texts == cells and all(isinstance(text, str) for text in texts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple), st.one_of(st.floats(-2, 300), st.just(float("nan")), st.just(float("inf"))))
def test_any_array_gives_images_of_the_trained_size_or_one_sentence(shape, fill):
    from types import SimpleNamespace

    from trainflow.tasks.autoencoder_serving import request_images

    predictor = SimpleNamespace(model=SimpleNamespace(build_config={"in_channels": 3, "resolution": 8}))
    try:
        images = request_images(predictor, np.full(shape, fill, dtype=np.float32))
    except UserFacingError as refused:
        assert "\n" not in str(refused) and "(N, 3, 8, 8)" in str(refused)
        return
    assert images.shape[1:] == (3, 8, 8) and len(images) and 0 <= fill <= 1
