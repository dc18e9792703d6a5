"""Every registered version is an MLflow Model: it loads in a fresh process and serves over REST, with nothing pickled."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_evaluation_report import tiny_supervised_run
from trainflow.artifacts import LocalArtifact

REPO = Path(__file__).resolve().parents[1]


def register(model_dir: str, tmp: Path, name: str, task: str, dataset: dict, metrics: dict) -> dict:
    from trainflow.stages.register_model import register_model

    config = {"model_name": name, "experiment": "tests", "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "gates": []}
    return register_model(model_dir, dataset, metrics, {}, config, f"{name}-run", {"seed": 0},
                          LocalArtifact(str(tmp / f"{name}.md")), task=task)


def fresh_python(code: str, tracking_uri: str, timeout: int = 120) -> dict:
    """Run `code` in a new interpreter (nothing of this process's imports) and return the JSON it prints last."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
           "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_base_model):
    """An iris classifier and the tiny text-to-image pipeline, each registered as `champion` in one SQLite registry."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("registry")
    run = tiny_supervised_run(root, monkeypatch)
    iris = register(run["model"].path, root, "iris", "classification", run["dataset"].metadata, {"accuracy": 0.9})
    pictures = register(str(tiny_base_model), root, "pictures", "text_to_image", {"content_sha256": "x"}, {"test_loss": 0.1})
    assert iris["registered"] and pictures["registered"]
    return root, f"sqlite:///{root / 'mlflow.db'}", run


def test_a_registered_classifier_loads_in_a_fresh_process_and_predicts_named_probabilities(registry):
    root, uri, _ = registry
    answer = fresh_python(
        "import json, mlflow\n"
        "model = mlflow.pyfunc.load_model('models:/iris@champion')\n"
        "example = model.input_example\n"
        "out = model.predict(example)\n"
        "print(json.dumps({'columns': list(out.columns), 'row': out.iloc[0].to_dict(),\n"
        "                  'inputs': model.metadata.get_input_schema().input_names()}))\n", uri)
    classes = [c.removeprefix("probability_") for c in answer["columns"] if c.startswith("probability_")]
    assert classes == ["setosa", "versicolor", "virginica"]
    assert answer["row"]["predicted_class"] in classes
    assert sum(answer["row"][f"probability_{c}"] for c in classes) == pytest.approx(1.0, abs=1e-6)
    assert answer["inputs"] == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def test_a_registered_text_to_image_model_turns_prompts_into_png_images_in_a_fresh_process(registry):
    root, uri, _ = registry
    answer = fresh_python(
        "import base64, io, json, mlflow, pandas as pd\n"
        "from PIL import Image\n"
        "model = mlflow.pyfunc.load_model('models:/pictures@champion')\n"
        "out = model.predict(pd.DataFrame({'prompt': ['a 3', 'a 7']}), params={'num_inference_steps': 2, 'seed': 5})\n"
        "sizes = [Image.open(io.BytesIO(base64.b64decode(v))).size for v in out['image_png_base64']]\n"
        "params = {p.name: p.default for p in model.metadata.signature.params}\n"
        "print(json.dumps({'sizes': sizes, 'params': params}))\n", uri, timeout=240)
    assert answer["sizes"] == [[32, 32], [32, 32]]
    assert answer["params"] == {"seed": 0, "num_inference_steps": 30, "guidance_scale": 7.5, "resolution": 32}


def test_the_logged_model_holds_code_safetensors_and_no_pickle(registry):
    import mlflow
    from mlflow import MlflowClient

    root, uri, _ = registry
    client = MlflowClient(uri, registry_uri=uri)
    for name in ("iris", "pictures"):
        version = client.get_model_version_by_alias(name, "champion")
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(root / f"dl-{name}"),
                                                          tracking_uri=uri))
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        assert not [f for f in files if f.endswith((".pkl", ".pickle", ".bin", ".pt", ".pth"))], files
        assert "python_model.pkl" not in files and "served_model.py" in files
        assert any(f.endswith(".safetensors") for f in files)
        mlmodel = (folder / "MLmodel").read_text()
        assert "signature:" in mlmodel and (folder / "input_example.json").is_file()


def test_a_request_for_another_shape_fails_with_one_sentence(registry):
    import mlflow
    import pandas as pd

    from trainflow.errors import UserFacingError

    _, uri, _ = registry
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/iris@champion")
    with pytest.raises(Exception, match="sepal"):  # MLflow's schema check names the missing columns first
        model.predict(pd.DataFrame({"x": [1.0]}))
    from trainflow.tasks import get_task

    predictor = model.unwrap_python_model().predictor
    with pytest.raises(UserFacingError, match="lacks feature column"):
        get_task("classification").serve(predictor, pd.DataFrame({"x": [1.0]}), {})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # starts `mlflow models serve` (uvicorn) and waits for it: ~15-30 s on a busy 2-core machine
def test_mlflow_models_serve_answers_a_rest_request(registry):
    root, uri, _ = registry
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),  # uvicorn
           "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", "models:/iris@champion", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(root / "serve.log", "w"))
    try:
        body = json.dumps({"dataframe_split": {
            "columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"],
            "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}).encode()
        deadline = time.monotonic() + 55
        while True:
            assert server.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the model server did not answer within 55 s"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=20)
    rows = answer["predictions"]
    assert [row["predicted_class"] for row in rows] == ["setosa", "virginica"]
    assert all(abs(sum(v for k, v in row.items() if k.startswith("probability_")) - 1) < 1e-6 for row in rows)


@pytest.mark.parametrize("task, architecture, per_pixel", [("segmentation", "seg_cnn", True), ("regression", "small_cnn", False)])
def test_image_models_serve_arrays_and_describe_them_in_their_schema(tmp_path, task, architecture, per_pixel):
    """Without MLflow: what the task's serving schema says an image model takes, and what serve returns for it."""
    import numpy as np

    from trainflow.config import ModelConfig
    from trainflow.errors import UserFacingError
    from trainflow.models.model_folder import save_model_folder
    from trainflow.models.zoo import build_model
    from trainflow.tasks import get_task

    names = ["background", "stroke"] if per_pixel else ["size"]
    model = build_model(ModelConfig(architecture=architecture), per_pixel=per_pixel, num_outputs=len(names), resolution=8,
                        input_mean=[0.5] * 3, input_std=[0.25] * 3)
    save_model_folder(model, tmp_path / "m", {"task": task, "kind": "image", "class_names": names if per_pixel else [],
                                              "target_names": [] if per_pixel else names, "feature_names": None,
                                              "target_mean": [10.0], "target_std": [2.0]})
    definition = get_task(task)
    schema = definition.serving_schema(tmp_path / "m")
    assert schema.inputs.shape == (-1, 3, 8, 8) and schema.example.shape == (1, 3, 8, 8)
    answer = definition.serve(definition.load_for_prediction(tmp_path / "m"), np.random.rand(2, 3, 8, 8).astype("float32"), {})
    if per_pixel:
        assert answer.shape == (2, 8, 8) and set(np.unique(answer)) <= {0, 1}
    else:
        assert list(answer.columns) == ["size"] and len(answer) == 2
    with pytest.raises(UserFacingError, match=r"shape \(2, 1, 8, 8\); send images as float32 \(N, 3, H, W\)"):
        definition.serve(definition.load_for_prediction(tmp_path / "m"), np.zeros((2, 1, 8, 8), "float32"), {})
