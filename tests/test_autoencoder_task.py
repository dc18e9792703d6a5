"""Task autoencoder: trains on digits, resumes bit for bit after SIGKILL, runs under 2-process DDP, exports a folder
that loads back and predicts, scores the anomaly class by ROC-AUC; bad inputs are one sentence."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from task_runs import digits_cache, run_driver, step_losses, torchrun_driver, train_here, write_request  # noqa: E402
from trainflow.artifacts import LocalArtifact  # noqa: E402
from trainflow.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from trainflow.errors import MissingWeightsError, UserFacingError  # noqa: E402
from trainflow.tasks import get_task  # noqa: E402
from trainflow.tasks.autoencoder import autoencoder_metrics  # noqa: E402

MODEL = {"width": 4}
TRAIN = {"max_epochs": 2, "batch_size": 4, "device": "cpu", "deterministic": True, "logging": {"tensorboard": False},
         "optimizer": {"name": "adamw", "learning_rate": 0.01}, "checkpoints": {"every_n_steps": 4, "total_limit": 4},
         "early_stopping": {"monitor": "val_mse", "patience": None},
         "autoencoder": {"latent_dim": 4, "variational": True, "anomaly_class": "3"}}
STEPS = 2 * 56 // 4  # 100 digits: 60 train records, 56 of them not a 3; batch 4; 2 epochs


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return digits_cache(tmp_path_factory.mktemp("autoencoder-data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache) -> Path:
    folder = tmp_path_factory.mktemp("autoencoder-run")
    train_here(write_request(folder, "autoencoder", cache, MODEL, TRAIN))
    return folder


def test_trains_without_the_anomaly_class_and_logs_every_step(uninterrupted):
    losses = step_losses(uninterrupted / "checkpoints")
    assert [step for step, _ in losses] == list(range(1, STEPS + 1))
    record = json.loads((uninterrupted / "model" / "trainflow_training.json").read_text())
    assert record["history"][-1]["val_mse"] < record["history"][0]["val_mse"] or record["best_step"] < STEPS


@pytest.mark.slow  # two training processes: about 30 s on a busy 2-core machine
def test_sigkill_mid_run_then_resume_gives_the_same_per_step_losses(tmp_path, cache, uninterrupted):
    request = write_request(tmp_path, "autoencoder", cache, MODEL, TRAIN)
    killed = run_driver(request, "--kill-after-step", "17")  # mid second epoch, one step past a checkpoint
    assert killed.returncode == -signal.SIGKILL
    assert len(step_losses(tmp_path / "checkpoints")) == 17
    resumed = run_driver(request)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint step-000000016" in resumed.stdout
    assert step_losses(tmp_path / "checkpoints") == step_losses(uninterrupted / "checkpoints")  # bitwise


def test_exported_folder_loads_back_and_predicts(uninterrupted, cache):
    predictor = get_task("autoencoder").load_for_prediction(uninterrupted / "model")
    images = torch.rand(5, 3, 8, 8)
    reconstructions = predictor.predict(images)
    assert reconstructions.shape == images.shape and 0 <= float(reconstructions.min()) <= float(reconstructions.max()) <= 1
    assert predictor.anomaly_scores(images).shape == (5,)
    errors, anomaly = predictor.record_outputs(cache, 16, torch.device("cpu"))
    assert errors.shape == (20, 3) and int(anomaly.sum()) == 2  # the test split's two 3s


def test_evaluate_reports_reconstruction_quality_and_the_anomaly_roc_auc(tmp_path, uninterrupted, cache):
    from trainflow.stages.evaluate import evaluate

    metrics = LocalArtifact(str(tmp_path / "metrics.json"))
    results = evaluate(str(cache), str(uninterrupted / "model"), MODEL, {"bootstrap_resamples": 0}, 0, metrics,
                       task="autoencoder")
    assert 0 < results["mse"] < 1 and results["psnr"] > 0 and -1 <= results["ssim"] <= 1
    assert 0 <= results["roc_auc"] <= 1 and results["num_anomalous"] == 2 and results["num_normal"] == 18
    assert json.loads((tmp_path / "metrics.json").read_text())["roc_auc"] == results["roc_auc"]


def test_roc_auc_ranks_records_by_reconstruction_error():
    errors = torch.tensor([[0.01, 20.0, 0.9], [0.02, 17.0, 0.8], [0.30, 5.0, 0.1], [0.25, 6.0, 0.2]], dtype=torch.float64)
    separated = autoencoder_metrics(errors, torch.tensor([0, 0, 1, 1]))
    assert separated["roc_auc"] == 1.0 and separated["mse"] == pytest.approx(0.015)
    assert autoencoder_metrics(errors, torch.tensor([1, 1, 0, 0]))["roc_auc"] == 0.0
    assert "roc_auc" not in autoencoder_metrics(errors, torch.zeros(4, dtype=torch.long))  # no anomaly mode


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_ddp_trains_and_exports(tmp_path, cache):
    done = torchrun_driver(write_request(tmp_path, "autoencoder", cache, MODEL, TRAIN))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stdout
    assert len(step_losses(tmp_path / "checkpoints")) == 2 * (56 // 2 // 4)  # each rank: 28 records, batch 4
    predictor = get_task("autoencoder").load_for_prediction(tmp_path / "model")
    assert predictor.predict(torch.rand(2, 3, 8, 8)).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- bad inputs: one sentence naming the field
def run_config(**sections) -> dict:
    config = {"run_name": "ae", "task": "autoencoder", "ingest": {"sklearn_dataset": "digits", "resolution": 8},
              "model": {}, "register": {"model_name": "ae"}}
    config.update(sections)
    return config


@pytest.mark.parametrize("sections, field", [
    ({"ingest": {"sklearn_dataset": "iris"}}, "ingest.sklearn_dataset"),
    ({"model": {"architecture": "small_cnn"}}, "model.architecture"),
    ({"train": {"loss": {"name": "l1"}}}, "train.loss"),
])
def test_a_config_the_autoencoder_cannot_run_names_the_field(sections, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        RunConfig.model_validate(run_config(**sections))


def test_autoencoder_options_on_another_task_name_the_block():
    with pytest.raises(ValueError, match=r"train\.autoencoder: applies to task autoencoder only, not classification"):
        RunConfig.model_validate(run_config(task="classification", model={"architecture": "small_cnn"},
                                            train={"autoencoder": {"latent_dim": 8}}))


def test_a_label_only_table_is_refused_at_ingest_in_one_sentence(tmp_path):
    from trainflow.stages.ingest_split import ingest_split

    table = tmp_path / "labels.csv"
    table.write_text("id,score,label\n" + "".join(f"r{i},{i * 0.5},{i % 2}\n" for i in range(20)))
    dataset = LocalArtifact(str(tmp_path / "dataset"))
    with pytest.raises(UserFacingError, match="holds feature rows, not images") as raised:
        ingest_split({"table": str(table), "label_column": "label"}, 0, dataset, LocalArtifact(str(tmp_path / "r.md")),
                     task="autoencoder")
    assert "\n" not in str(raised.value) and not (tmp_path / "dataset" / "manifest.jsonl").exists()


def test_an_anomaly_class_the_data_lacks_names_the_field(cache):
    train = TrainConfig.model_validate({**TRAIN, "autoencoder": {"anomaly_class": "eleven"}})
    with pytest.raises(UserFacingError, match=r"train\.autoencoder\.anomaly_class: 'eleven' is not a class"):
        get_task("autoencoder").training_task(cache, ModelConfig(), train, 0)


def test_a_folder_of_another_kind_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "trainflow-supervised-model"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserFacingError, match="does not describe an autoencoder"):
        get_task("autoencoder").load_for_prediction(tmp_path)
    with pytest.raises(MissingWeightsError, match="model file .* is missing"):
        get_task("autoencoder").load_for_prediction(tmp_path / "missing")
