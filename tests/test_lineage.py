"""Lineage: the register stage records where a version came from on its run and version, once, and
`trainflow lineage` shows it; bad references and unreachable stores are one sentence, credentials never shown."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from registry_fixtures import table_classifier
from trainflow.artifacts import LocalArtifact

REPO = Path(__file__).resolve().parents[1]
CONTENT_HASH = "ab" * 32
SECRET = "s3cretpw"
PARAMS = {"seed": 3, "run_name": "lineage-run",
          "registration": {"model_name": "lineage", "tracking_uri": f"http://alice:{SECRET}@mlflow.example:5000"},
          "ingest": {"dataset_dir": "/data/digits", "split": {"train": 0.8, "val": 0.1, "test": 0.1}}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite MLflow store in tmp_path; MLflow's process-wide URIs (which connect() sets) are restored after."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for name in ("TRAINFLOW_GIT_COMMIT", "TRAINFLOW_IMAGE", "TRAINFLOW_IMAGE_DIGEST"):
        monkeypatch.delenv(name, raising=False)
    return uri


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return table_classifier(tmp_path_factory.mktemp("lineage-model") / "model")


def dataset_folder(root: Path) -> Path:
    """A Dataset artifact's manifest, as ingest writes it (one JSON line per kept record)."""
    folder = root / "dataset"
    folder.mkdir()
    lines = [json.dumps({"id": f"r{i}", "split": split, "sha256": f"{i:064x}", "features": [i, i + 1.0, 2.0]})
             for i, split in enumerate(["train", "train", "val", "test"])]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def register(model_dir: Path, uri: str, tmp_path: Path, dataset: Path, run_id: str = "kfp-run-7", name: str = "lineage"):
    from trainflow.stages.register_model import register_model

    metadata = {"content_sha256": CONTENT_HASH, "source": "/data/digits", "num_records": 4, "num_train": 2,
                "num_val": 1, "num_test": 1, "kind": "table"}
    return register_model(str(model_dir), metadata, {"accuracy": 0.75}, {},
                          {"model_name": name, "experiment": "tests", "tracking_uri": uri, "gates": []},
                          "lineage-run", PARAMS, LocalArtifact(str(tmp_path / f"report-{run_id}.md")),
                          task="classification", pipeline_run_id=run_id, dataset_dir=str(dataset),
                          dataset_uri=f"s3://bob:{SECRET}@bucket/artifacts/dataset?sig={SECRET}",
                          pipeline_name="trainflow-supervised")


def expected_lineage(dataset: Path) -> dict[str, str]:
    """The tags computed here, independently of trainflow.registry.lineage."""
    redacted = json.loads(json.dumps(PARAMS).replace(f"alice:{SECRET}", "***"))
    canonical = json.dumps(redacted, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"trainflow.lineage.dataset_sha256": CONTENT_HASH,
            "trainflow.lineage.split_manifest_sha256": hashlib.sha256((dataset / "manifest.jsonl").read_bytes()).hexdigest(),
            "trainflow.lineage.config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
            "trainflow.lineage.trainflow_version": "0.1.0", "trainflow.lineage.git_commit": commit,
            "trainflow.lineage.image": "registry.example/trainflow@sha256:" + "c" * 64,
            "trainflow.lineage.image_digest": "sha256:" + "c" * 64,
            "trainflow.lineage.kfp_run_id": "kfp-run-7", "trainflow.lineage.pipeline_name": "trainflow-supervised"}


def lineage_tags(tags: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in tags.items() if key.startswith("trainflow.lineage.")}


def test_register_records_lineage_on_run_and_version_once(store, model_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("TRAINFLOW_IMAGE", "registry.example/trainflow@sha256:" + "c" * 64)
    dataset = dataset_folder(tmp_path)
    first = register(model_dir, store, tmp_path, dataset)
    again = register(model_dir, store, tmp_path, dataset)  # a retried step of the same KFP run
    assert first["registered"] and again["model_version"] == first["model_version"]
    assert again["mlflow_run_id"] == first["mlflow_run_id"]

    client = MlflowClient(store, registry_uri=store)
    run = client.get_run(first["mlflow_run_id"])
    version = client.get_model_version("lineage", str(first["model_version"]))
    expected = expected_lineage(dataset)
    assert lineage_tags(run.data.tags) == expected
    assert lineage_tags(version.tags) == expected
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, "a retry must not log the dataset input again"
    assert (inputs[0].dataset.name, inputs[0].dataset.digest) == ("/data/digits", CONTENT_HASH[:36])
    assert json.loads(inputs[0].dataset.source) == {"uri": "s3://***@bucket/artifacts/dataset?sig=***"}
    assert inputs[0].dataset.source_type == "s3"
    recorded = json.dumps([run.data.tags, run.data.params, version.tags, inputs[0].dataset.source])
    assert SECRET not in recorded


def test_lineage_survives_a_missing_manifest_and_no_git(store, model_dir, tmp_path, monkeypatch):
    from trainflow.registry import lineage

    monkeypatch.setenv("TRAINFLOW_GIT_COMMIT", "unknown")  # an image built without REVISION
    assert lineage.git_commit(tmp_path) is None  # tmp_path is no git checkout
    monkeypatch.setenv("TRAINFLOW_GIT_COMMIT", "A" * 40)
    assert lineage.git_commit(tmp_path) == "a" * 40
    tags = lineage.compute_lineage({"content_sha256": CONTENT_HASH}, str(tmp_path / "nothing-here"), {"seed": 1})
    assert "trainflow.lineage.split_manifest_sha256" not in tags and "trainflow.lineage.kfp_run_id" not in tags
    assert tags["trainflow.lineage.dataset_sha256"] == CONTENT_HASH


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from trainflow.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_lineage_command_prints_the_versions_origin(store, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAINFLOW_IMAGE", "registry.example/trainflow@sha256:" + "c" * 64)
    dataset = dataset_folder(tmp_path)
    outcome = register(model_dir, store, tmp_path, dataset)
    capsys.readouterr()
    expected = expected_lineage(dataset)

    code, out, err = run_cli(["lineage", "lineage@champion", "--tracking-uri", store], capsys)
    assert code == 0, err
    assert f"\nversion: " in out and f" {outcome['model_version']}\n" in out
    assert "champion" in out and outcome["mlflow_run_id"] in out
    for key, value in expected.items():
        assert f"{key[len('trainflow.lineage.'):]}:" in out and value in out
    assert "/data/digits (digest " + CONTENT_HASH[:36] in out
    assert SECRET not in out + err

    code, out, _ = run_cli(["lineage", "lineage", str(outcome["model_version"]), "--tracking-uri", store, "--json"], capsys)
    shown = json.loads(out)
    assert code == 0 and shown["version"] == outcome["model_version"] and "champion" in shown["aliases"]
    assert {f"trainflow.lineage.{k}": v for k, v in shown["lineage"].items()} == expected
    assert shown["dataset_inputs"][0]["source"] == "s3://***@bucket/artifacts/dataset?sig=***"


@pytest.mark.parametrize("argv, says", [
    (["lineage@"], "is not NAME@ALIAS"),
    (["a@b@c"], "is not NAME@ALIAS"),
    (["lineage"], "names no version"),
    (["lineage@champion", "1"], "not both"),
    (["lineage", "0"], "versions start at 1"),
])
def test_malformed_references_are_one_sentence_and_exit_2(store, capsys, argv, says):
    code, out, err = run_cli(["lineage", *argv, "--tracking-uri", store], capsys)
    assert code == 2 and out == ""
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_models_aliases_and_versions_are_one_sentence_and_exit_2(store, model_dir, tmp_path, capsys):
    register(model_dir, store, tmp_path, dataset_folder(tmp_path))
    capsys.readouterr()
    for argv, says in [(["nobody@champion"], "no registered model version nobody@champion"),
                       (["lineage@nosuchalias"], "no registered model version lineage@nosuchalias"),
                       (["lineage", "99"], "no registered model version lineage version 99")]:
        code, out, err = run_cli(["lineage", *argv, "--tracking-uri", store], capsys)
        assert code == 2 and out == "", argv
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unreachable_store_is_one_sentence_without_its_credentials(store, capsys, monkeypatch):
    from trainflow.commands import lineage as command

    monkeypatch.setattr(command, "CONNECT_TRIES", 1)
    code, out, err = run_cli(["lineage", "lineage@champion", "--tracking-uri",
                              f"http://alice:{SECRET}@127.0.0.1:9/?token={SECRET}"], capsys)
    assert code == 2 and out == ""
    assert "did not answer" in err and len(err.strip().splitlines()) == 1
    assert SECRET not in err and "Traceback" not in err
