"""The evaluate stage on tiny real runs: best and last checkpoints, per-record outputs, HTML/Markdown/KFP reports."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainflow.artifacts import LocalArtifact
from trainflow.evaluation.record_outputs import load_record_outputs
from trainflow.report.kfp_classification import roc_points
from trainflow.stages.build_cache import build_cache
from trainflow.stages.evaluate import evaluate
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.train import train
from trainflow.models.model_folder import load_model_folder
from trainflow.tasks.supervised import SupervisedTraining

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from report_screenshot import CHROMIUM, screenshot_html  # noqa: E402  (a developer tool, not the library)

OUTPUTS = ("metrics", "report", "summary", "predictions", "classification")
TRAIN = {"batch_size": 16, "optimizer": {"learning_rate": 1e-2}, "logging": {"tensorboard": False}}


def tiny_supervised_run(root: Path, monkeypatch, task: str = "classification", source: str = "iris",
                        model: dict | None = None, scripted: list[float] | None = None, monitor: str = "val_accuracy",
                        resamples: int = 200, max_records: int | None = None) -> dict:
    """Real ingest, cache and train stages on a bundled scikit-learn set, then evaluate with every output.

    `scripted`: the monitored validation values, one per epoch (the real validation loss is kept),
    so which checkpoint is best does not depend on training noise.
    """
    model = model or {"architecture": "mlp", "hidden_sizes": [16]}
    art = {name: LocalArtifact(str(root / name)) for name in ("dataset", "ingest.md", "cache", "model", "train.json")}
    # digits are 8x8 scans: keep them so (ingest's default resolution would upscale them to 512x512)
    ingest = {"sklearn_dataset": source, "resolution": 8, **({"max_records": max_records} if max_records else {})}
    ingest_split(ingest, 0, art["dataset"], art["ingest.md"], task=task)
    build_cache(art["dataset"].path, model, {}, art["cache"], task=task)
    epochs = len(scripted) if scripted else 1
    if scripted:
        values = iter(scripted)
        real = SupervisedTraining.finalize_validation
        key = monitor.removeprefix("val_")
        monkeypatch.setattr(SupervisedTraining, "finalize_validation", lambda self, totals: {**real(self, totals), key: next(values)})
    train(task, art["cache"].path, model, {**TRAIN, "max_epochs": epochs, "early_stopping": {"monitor": monitor}}, 0,
          art["model"], art["train.json"], checkpoint_dir=str(root / "checkpoints"))
    monkeypatch.undo()
    return {**art, "root": root, "model_config": model, "task": task,
            "evaluate": {"bootstrap_resamples": resamples, "batch_size": 64}}


def run_evaluate(run: dict, folder: Path, **config) -> tuple[dict, dict]:
    out = {name: LocalArtifact(str(folder / name)) for name in OUTPUTS}
    result = evaluate(run["cache"].path, run["model"].path, run["model_config"], {**run["evaluate"], **config}, 0,
                      out["metrics"], task=run["task"], report=out["report"], summary=out["summary"],
                      predictions=out["predictions"], classification=out["classification"])
    return result, out


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    """Best at epoch 2 of 4 (scripted validation), so the last checkpoint differs from the shipped one."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("iris-run")
    run = tiny_supervised_run(root, monkeypatch, scripted=[0.5, 0.9, 0.6, 0.7])
    result, out = run_evaluate(run, root / "evaluated")
    return run, result, out


def test_evaluate_scores_best_and_last_checkpoint_and_reports_the_stop(iris_run):
    run, result, out = iris_run
    record = json.loads((Path(run["model"].path) / "trainflow_training.json").read_text())
    assert result["best_step"] == record["best_step"] < record["steps_run"] == result["last_step"]
    assert result["best_epoch"] == 2 and result["stop_reason"].startswith("reached train.max_epochs")
    # The last checkpoint's numbers come from its own weights: rebuild them by hand and compare.
    model, meta = load_model_folder(run["model"].path)
    model.load_state_dict(load_file(Path(record["last_checkpoint"]) / "model.safetensors"))
    scored = load_record_outputs(out["predictions"].path)
    with torch.no_grad():
        expected = model(_test_inputs(run)).float().softmax(1).double()
    assert torch.allclose(scored.outputs["last"], expected, atol=1e-6)
    assert result["last_accuracy"] == pytest.approx(float((expected.argmax(1) == scored.truth).double().mean()))
    assert set(result["best_vs_last"]) == {"accuracy", "f1_macro"}
    comparison = result["best_vs_last"]["accuracy"]
    assert comparison["difference"] == pytest.approx(result["accuracy"] - result["last_accuracy"])
    assert comparison["low"] <= comparison["difference"] <= comparison["high"]
    assert out["metrics"].metadata["last_accuracy"] == result["last_accuracy"]


def _test_inputs(run: dict) -> torch.Tensor:
    from trainflow.data.cache.supervised_cache import SupervisedCache

    test_set = SupervisedCache(run["cache"].path, "test")
    return torch.stack([test_set[index]["inputs"] for index in range(len(test_set))])


def test_predictions_hold_every_record_in_test_split_order(iris_run):
    run, result, out = iris_run
    scored = load_record_outputs(out["predictions"].path)
    from trainflow.evaluation.record_outputs import test_record_ids

    assert scored.record_ids == test_record_ids(run["cache"].path) and len(scored.record_ids) == result["num_test"]
    assert set(scored.outputs) == {"best", "last"} and scored.truth.dtype == torch.int64
    assert scored.outputs["best"].shape == (result["num_test"], 3)
    assert scored.names == ["setosa", "versicolor", "virginica"]
    recomputed = (scored.outputs["best"].argmax(1) == scored.truth).double().mean()
    assert float(recomputed) == pytest.approx(result["accuracy"])


def test_unreachable_last_checkpoint_is_absent_with_the_reason(iris_run, tmp_path):
    run, _, _ = iris_run
    moved = run["root"] / "checkpoints-moved"
    shutil.move(run["root"] / "checkpoints", moved)
    try:
        result, out = run_evaluate(run, tmp_path)
    finally:
        shutil.move(moved, run["root"] / "checkpoints")
    assert "not reachable" in result["last_checkpoint_skipped"]
    assert "last_accuracy" not in result and "best_vs_last" not in result
    assert set(load_record_outputs(out["predictions"].path).outputs) == {"best"}
    assert "Last checkpoint not scored" in Path(out["report"].path).read_text()
    assert "not reachable" in Path(out["summary"].path).read_text()


def test_when_the_best_is_the_last_its_scores_are_the_last(tmp_path, monkeypatch):
    run = tiny_supervised_run(tmp_path, monkeypatch, scripted=[0.5, 0.6], resamples=0)
    shutil.rmtree(tmp_path / "checkpoints")  # not needed: the shipped model is the last checkpoint
    result, out = run_evaluate(run, tmp_path / "evaluated")
    assert result["last_is_best"] and result["last_accuracy"] == result["accuracy"]
    assert "early stopping changed nothing" in Path(out["report"].path).read_text()


def test_html_report_is_self_contained_and_shows_what_a_reader_needs(iris_run):
    _, result, out = iris_run
    page = Path(out["report"].path).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    for text in ("Confusion matrix", "Per class", "versicolor", "ROC curve (micro-average one-vs-rest)",
                 "Best vs last checkpoint", f"step {result['best_step']}, epoch 2", "reached train.max_epochs",
                 f"{result['accuracy_ci_low']:.4g} – {result['accuracy_ci_high']:.4g}"):
        assert text in page, text


def test_markdown_summary_has_the_headline_table_with_intervals(iris_run):
    _, result, out = iris_run
    summary = Path(out["summary"].path).read_text()
    assert f"| accuracy | {result['accuracy']:.4g} | {result['accuracy_ci_low']:.4g} – {result['accuracy_ci_high']:.4g} |" in summary
    assert "best vs last, accuracy" in summary and f"step {result['best_step']}" in summary


def test_classification_metrics_carry_kfp_confusion_matrix_and_roc(iris_run):
    _, result, out = iris_run
    metadata = out["classification"].metadata
    rows = [row["row"] for row in metadata["confusionMatrix"]["rows"]]
    assert rows == result["confusion_matrix"]
    assert [spec["displayName"] for spec in metadata["confusionMatrix"]["annotationSpecs"]] == ["setosa", "versicolor", "virginica"]
    points = metadata["confidenceMetrics"]
    assert points[0]["falsePositiveRate"] == 0 and points[-1]["recall"] == 1
    assert all(np.isfinite(p["confidenceThreshold"]) for p in points)
    assert metadata["rocCurveKind"] == "micro-average one-vs-rest"


def test_kfp_classification_metrics_artifact_accepts_the_logging():
    from kfp.dsl import ClassificationMetrics

    from trainflow.report.kfp_classification import log_classification_metrics

    artifact = ClassificationMetrics(name="classification_metrics")
    probabilities = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    log_classification_metrics(artifact, [[1, 0], [1, 2]], probabilities, labels, ["no", "yes"])
    assert artifact.metadata["rocCurveKind"] == "positive class 'yes'"
    assert artifact.metadata["confusionMatrix"]["rows"] == [{"row": [1, 0]}, {"row": [1, 2]}]


@pytest.mark.parametrize("classes", [2, 4])
def test_roc_points_give_scikit_learns_auc(classes):
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(classes)
    labels = torch.randint(0, classes, (150,), generator=generator)
    logits = torch.randn(150, classes, generator=generator, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(labels, classes)
    probabilities = logits.softmax(1)
    roc = roc_points(probabilities, labels, [f"c{i}" for i in range(classes)])
    area = np.trapezoid(roc["tpr"], roc["fpr"])
    if classes == 2:
        expected = roc_auc_score(labels.numpy(), probabilities[:, 1].numpy())
    else:
        expected = roc_auc_score(np.eye(classes)[labels.numpy()], probabilities.numpy(), average="micro")
    assert area == pytest.approx(expected, abs=1e-12)
    assert max(roc["thresholds"]) > 1.0 and np.isfinite(roc["thresholds"]).all()


@pytest.mark.parametrize("task,source,model,text", [
    ("regression", "diabetes", {"architecture": "mlp", "hidden_sizes": [8]}, "scikit-learn LinearRegression"),
    # A U-Net trains slowly on a CPU: ~10 s alone, ~30 s on a busy 2-core machine.
    pytest.param("segmentation", "digits", {"architecture": "seg_cnn", "width": 4}, "Pixel confusion matrix",
                 marks=pytest.mark.slow),
])
def test_regression_and_segmentation_reports(task, source, model, text, tmp_path, monkeypatch):
    monitor = "val_loss"
    run = tiny_supervised_run(tmp_path, monkeypatch, task=task, source=source, model=model, monitor=monitor, resamples=100,
                              max_records=150)  # a few optimizer steps: the report is under test, not the model
    result, out = run_evaluate(run, tmp_path / "evaluated")
    page = Path(out["report"].path).read_text()
    assert text in page and "Headline metrics" in page
    assert "confusionMatrix" not in out["classification"].metadata  # ClassificationMetrics is for classifiers only
    scored = load_record_outputs(out["predictions"].path)
    if task == "segmentation":
        assert scored.outputs["best"].dtype == torch.int64 and scored.outputs["best"].ndim == 3
        assert 0 <= result["mean_iou"] <= 1
    else:
        assert result["r2_ci_low"] <= result["r2"] <= result["r2_ci_high"]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is not installed (make report-screenshot installs it as root)")
def test_report_renders_in_headless_chromium(iris_run, tmp_path):
    from PIL import Image

    _, _, out = iris_run
    png = screenshot_html(out["report"].path, tmp_path / "report.png", width=1000, height=1400)
    with Image.open(png) as image:
        assert image.size == (1000, 1400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "a blank or error page has a handful of colours"


@pytest.mark.slow  # trains the tiny Stable-Diffusion UNet for two epochs: ~40 s on a busy 2-core machine
def test_text_to_image_scores_best_last_and_base_with_identical_noise(digits_dir, tiny_base_model, tmp_path, monkeypatch):
    from trainflow.tasks.text_to_image_training import TextToImageTask

    art = {name: LocalArtifact(str(tmp_path / name)) for name in ("dataset", "ingest.md", "cache", "model", "train.json")}
    ingest_split({"dataset_dir": str(digits_dir), "resolution": 32, "label_column": "label", "max_records": 40}, 0,
                 art["dataset"], art["ingest.md"], task="text_to_image")
    build_cache(art["dataset"].path, {"base": str(tiny_base_model)}, {"batch_size": 40, "storage_dtype": "float32"}, art["cache"], task="text_to_image")
    losses = iter([0.4, 0.5])  # the best is epoch 1, so the last checkpoint (epoch 2) is scored beside it
    monkeypatch.setattr(TextToImageTask, "finalize_validation", lambda self, totals: {"loss": next(losses)})
    train("text_to_image", art["cache"].path, {"base": str(tiny_base_model)},
          {**TRAIN, "max_epochs": 2, "optimizer": {"learning_rate": 1e-3}}, 0, art["model"], art["train.json"],
          checkpoint_dir=str(tmp_path / "checkpoints"))
    monkeypatch.undo()
    run = {"cache": art["cache"], "model": art["model"], "model_config": {"base": str(tiny_base_model)},
           "task": "text_to_image", "evaluate": {"bootstrap_resamples": 200, "batch_size": 32}}
    result, out = run_evaluate(run, tmp_path / "evaluated")
    scored = load_record_outputs(out["predictions"].path)
    assert set(scored.outputs) == {"best", "last", "base"} and result["best_epoch"] == 1
    for source, key in (("best", "test_loss"), ("last", "last_test_loss"), ("base", "base_test_loss")):
        assert float(scored.outputs[source].mean()) == pytest.approx(result[key])
    assert result["last_test_loss"] != result["test_loss"]
    assert result["test_loss_ci_low"] <= result["test_loss"] <= result["test_loss_ci_high"]
    assert result["vs_base"]["test_loss"]["improvement"] == pytest.approx(result["base_test_loss"] - result["test_loss"])
    page = Path(out["report"].path).read_text()
    assert "Test denoising loss" in page and "Fine-tuned vs base" in page and "Best vs last checkpoint" in page
    assert out["classification"].metadata == {"stage": "evaluate", "stage_seconds": out["classification"].metadata["stage_seconds"]}
