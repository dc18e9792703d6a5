"""Each stage function called directly, chained on a small subset of the digits."""

import json
import math
from pathlib import Path

import h5py
import pytest
import torch
from safetensors.torch import load_file

from conftest import small_config
from trainflow.artifacts import LocalArtifact
from trainflow.errors import MissingWeightsError
from trainflow.tasks import text_to_image_training
from trainflow.stages.build_cache import build_cache
from trainflow.stages.evaluate import evaluate
from trainflow.stages.ingest_split import ingest_split
from trainflow.stages.register_model import register_model
from trainflow.stages.score_generation import score_generation
from trainflow.stages.train import train


@pytest.fixture(scope="module")
def chain(tmp_path_factory, digits_dir, tiny_base_model, digits_classifier):
    tmp = tmp_path_factory.mktemp("chain")
    config = small_config(digits_dir, tiny_base_model, digits_classifier, tmp)
    out = {name: LocalArtifact(str(tmp / name)) for name in
           ["dataset", "ingest_report", "cache", "model", "train_metrics", "eval_metrics", "score_metrics", "samples", "registration"]}
    ingest_split(config["ingest"], 0, out["dataset"], out["ingest_report"], task="text_to_image")
    build_cache(out["dataset"].path, config["model"], config["cache"], out["cache"], task="text_to_image")
    train("text_to_image", out["cache"].path, config["model"], config["train"], 0, out["model"], out["train_metrics"],
          checkpoint_dir=str(tmp / "ckpt"))
    return config, out, tmp


def test_cache_holds_every_split(chain):
    _, out, _ = chain
    with h5py.File(Path(out["cache"].path) / "latents.h5") as handle:
        sizes = {split: handle[split]["latent_moments"].shape for split in ("train", "val", "test")}
        assert handle["train"]["text_embeddings"].shape[1:] == (16, 64)
    assert sizes["train"] == (42, 8, 8, 8) and sizes["val"][0] == 9 and sizes["test"][0] == 9


def test_train_writes_a_complete_pipeline_folder_with_the_best_epoch(chain):
    _, out, tmp = chain
    model_dir = Path(out["model"].path)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json", "trainflow_training.json"):
        assert (model_dir / part).exists(), part
    record = json.loads((model_dir / "trainflow_training.json").read_text())
    assert record["best_epoch"] == out["model"].metadata["best_epoch"]
    assert len(record["history"]) == record["epochs_run"] == 2, "one validation per epoch"
    best = load_file(Path(record["best_checkpoint"]) / "model.safetensors")
    shipped = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(best[f"unet.{k}"], shipped[k]) for k in shipped)


def test_evaluate_reports_test_loss_for_tuned_and_base(chain):
    config, out, tmp = chain
    result = evaluate(out["cache"].path, out["model"].path, config["model"], config["evaluate"], 0, out["eval_metrics"], task="text_to_image")
    assert 0 < result["test_loss"] < result["base_test_loss"], "two epochs must already beat a random UNet"
    assert result["stop_reason"].startswith("reached train.max_epochs")
    assert json.loads(Path(out["eval_metrics"].path).read_text())["test_loss"] == result["test_loss"]


def test_score_computes_fid_and_prompt_accuracy_and_skips_missing_optionals(chain, tmp_path, monkeypatch):
    config, out, _ = chain
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    score_cfg = {**config["score"], "lpips": True, "clip_model": "openai/clip-vit-base-patch16",
                 "reference_cache": str(tmp_path / "reference-features")}
    result = score_generation(out["dataset"].path, out["model"].path, config["model"], score_cfg, 0, out["score_metrics"], out["samples"])
    values = result["metrics"]
    assert values["fid"] > 0 and values["base_fid"] > 0
    assert values["kid_std"] >= 0 and all(math.isfinite(values[k]) for k in ("kid", "base_kid"))
    # the cached reference features are the extractor's features of the test images, keyed by its weights
    from safetensors.torch import load_file as load_tensors
    from trainflow.config import ScoreConfig
    from trainflow.data.manifest import read_manifest
    from trainflow.metrics.feature_extractors import load_feature_extractor
    from trainflow.stages.score_generation import _load_reference

    (entry,) = (tmp_path / "reference-features").glob("*.safetensors")
    extractor = load_feature_extractor(ScoreConfig(**score_cfg).fid_features, torch.device("cpu"))
    real = _load_reference(Path(out["dataset"].path), [e.image for e in read_manifest(Path(out["dataset"].path), "test")])
    assert entry.name.startswith(extractor.identity) and torch.allclose(load_tensors(entry)["features"], extractor(real))
    assert 0 <= values["prompt_accuracy"] <= 1
    assert "alexnet-owt-7be5be79.pth" in result["skipped"]["lpips_diversity"]
    assert "openai/clip-vit-base-patch16" in result["skipped"]["clip_score"]
    assert "clip_score" not in values and "lpips_diversity" not in values
    assert "<img src=\"data:image/png;base64," in Path(out["samples"].path).read_text()


def test_missing_required_fid_weights_name_the_file(chain, tmp_path, monkeypatch):
    config, out, _ = chain
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    score_cfg = {**config["score"], "fid_features": {"kind": "inception"}}
    with pytest.raises(MissingWeightsError, match=r"torch-home/hub/checkpoints/pt_inception-2015-12-05-6726825d\.pth is missing"):
        score_generation(out["dataset"].path, out["model"].path, config["model"], score_cfg, 0,
                         LocalArtifact(str(tmp_path / "m")), LocalArtifact(str(tmp_path / "r")))
    missing_classifier = {**config["score"], "fid_features": {"kind": "classifier", "path": str(tmp_path / "no-clf")}}
    with pytest.raises(MissingWeightsError, match=r"no-clf/config\.json is missing"):
        score_generation(out["dataset"].path, out["model"].path, config["model"], missing_classifier, 0,
                         LocalArtifact(str(tmp_path / "m")), LocalArtifact(str(tmp_path / "r")))


def test_register_records_the_run_and_registers_only_past_the_gates(chain, tmp_path):
    config, out, _ = chain
    eval_metrics = {"test_loss": 0.2, "base_test_loss": 1.0, "stop_reason": "x"}
    passing = register_model(out["model"].path, out["dataset"].metadata, eval_metrics, {"fid": 3.0, "base_fid": 9.0},
                             {**config["register"], "gates": [{"metric": "fid", "beat_base": True}]}, "r1", config,
                             LocalArtifact(str(tmp_path / "ok.md")), task="text_to_image")
    assert passing["registered"] and passing["model_version"] == 1
    failing = register_model(out["model"].path, out["dataset"].metadata, eval_metrics, {"fid": 3.0, "base_fid": 9.0},
                             {**config["register"], "gates": [{"metric": "prompt_accuracy", "min": 0.5}]}, "r2", config,
                             LocalArtifact(str(tmp_path / "no.md")), task="text_to_image")
    assert not failing["registered"]
    assert failing["reasons"] == ["prompt_accuracy was not computed, so its gate cannot pass"]
    assert "Not registered" in (tmp_path / "no.md").read_text()

    from mlflow import MlflowClient
    uri = config["register"]["tracking_uri"]
    client = MlflowClient(uri, registry_uri=uri)  # else the registry is MLflow's process-wide default
    run = client.get_run(failing["mlflow_run_id"])
    assert run.data.tags["trainflow.dataset_sha256"] == out["dataset"].metadata["content_sha256"]
    assert [v.version for v in client.search_model_versions("name='test-model'")] == [1]


def test_early_stopping_keeps_the_best_epoch_not_the_last(chain, tmp_path, monkeypatch):
    """Validation improves, then worsens: training stops and ships epoch 2's weights, not the last."""
    config, out, _ = chain
    losses = iter([0.50, 0.40, 0.45, 0.46, 0.47, 0.48])
    monkeypatch.setattr(text_to_image_training.TextToImageTask, "finalize_validation", lambda self, totals: {"loss": next(losses)})
    cfg = {"max_epochs": 6, "batch_size": 16, "optimizer": {"learning_rate": 1e-3}, "logging": {"tensorboard": False},
           "early_stopping": {"patience": 3}, "checkpoints": {"keep_top_k": 1, "total_limit": 2}}
    model, metrics = LocalArtifact(str(tmp_path / "model")), LocalArtifact(str(tmp_path / "metrics"))
    summary = train("text_to_image", out["cache"].path, config["model"], cfg, 0, model, metrics,
                    checkpoint_dir=str(tmp_path / "ckpt"))
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 5
    assert summary["stop_kind"] == "patience" and "did not improve" in summary["stop_reason"]
    record = json.loads((tmp_path / "model" / "trainflow_training.json").read_text())
    best = load_file(Path(record["best_checkpoint"]) / "model.safetensors")
    last = load_file(Path(record["last_checkpoint"]) / "model.safetensors")
    shipped = load_file(tmp_path / "model/unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(best[f"unet.{k}"], shipped[k]) for k in shipped)
    assert not all(torch.equal(last[f"unet.{k}"], shipped[k]) for k in shipped)
