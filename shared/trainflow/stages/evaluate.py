"""Stage 4: score the best checkpoint on the untouched test split (and, for text-to-image, the base model too)."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_json
from trainflow.config import EvaluateConfig, ModelConfig, parse_section
from trainflow.devices import pick_device
from trainflow.errors import UserFacingError
from trainflow.training.run_training import TRAINING_RECORD

TEST_SEED_OFFSET = 2_000_003
HEADLINE_METRICS = {"classification": ["accuracy", "f1_macro"], "regression": ["r2", "rmse", "mae"],
                    "segmentation": ["mean_iou", "mean_dice", "pixel_accuracy"]}


def read_training_record(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the model input must be the output of the train stage")
    return json.loads(path.read_text())


def autocast_for(precision: str, device: torch.device):
    """The training run's precision, so test losses are measured as validation losses were."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def evaluate(
    cache_dir: str, model_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    metrics: ArtifactLike, task: str = "text_to_image",
) -> dict[str, Any]:
    """Score the train stage's model (its best checkpoint, never the last) on the test split.

    text_to_image: test denoising loss of the fine-tuned and the base model with the
    same per-record noise. Supervised: the task's metrics with seeded bootstrap 95%
    intervals for the headline ones (and, for tables, a scikit-learn baseline fitted
    on the same train split). The metrics artifact's metadata holds the numbers; its
    file holds everything as JSON (confusion matrix, per-class values, intervals).
    """
    cfg: EvaluateConfig = parse_section(EvaluateConfig, config, "the evaluate section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    with timed_stage("evaluate", metrics):
        record = read_training_record(model_dir)
        device = pick_device(cfg.device)
        if task == "text_to_image":
            results = _text_to_image_results(cache_dir, model_dir, model_cfg, cfg, seed, record, device)
        else:
            results = _supervised_results(cache_dir, model_dir, cfg, seed, task, record, device)
        facts = {"best_step": record["best_step"], "best_epoch": record["best_epoch"], "best_value": record["best_value"],
                 "monitor": record["monitor"], "steps_run": record["steps_run"], "epochs_run": record["epochs_run"],
                 "stop_reason": record["stop_reason"], "stop_kind": record["stop_kind"]}
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.metadata.update({**numbers, **{k: v for k, v in facts.items() if v is not None}})
        atomic_write_json(metrics.path, {**results, **facts})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items() if "/" not in k and not k.startswith("num_"))
        print(f"evaluate: {shown}; best step {record['best_step']} of {record['steps_run']} ({record['stop_reason']})")
    return {**results, **facts}


def _text_to_image_results(cache_dir, model_dir, model_cfg, cfg, seed, record, device) -> dict[str, Any]:
    from diffusers import DDPMScheduler

    from trainflow.diffusion.denoising_loss import fixed_noise_record_losses
    from trainflow.diffusion.latent_cache import CachedLatents, read_cache_attrs
    from trainflow.diffusion.model_loading import load_trained_parts, resolve_pipeline_folder

    test_set = CachedLatents(cache_dir, "test")
    if len(test_set) == 0:
        raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
    scaling = float(read_cache_attrs(cache_dir)["scaling_factor"])
    scheduler = DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler")

    @torch.no_grad()
    def test_loss(folder: Path) -> float:
        unet, text_encoder = load_trained_parts(folder)
        unet, text_encoder = unet.to(device).eval(), text_encoder.to(device).eval() if text_encoder is not None else None
        total, count = 0.0, 0
        with autocast_for(record.get("mixed_precision", "no"), device):
            for batch in DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False):
                text = text_encoder(batch["input_ids"].to(device))[0] if text_encoder is not None else batch["text"].to(device)
                losses = fixed_noise_record_losses(unet, scheduler, batch["moments"].to(device), text, batch["index"],
                                                   scaling, seed + TEST_SEED_OFFSET)
                total, count = total + float(losses.sum()), count + losses.numel()
        return total / count

    return {"test_loss": test_loss(Path(model_dir)),
            "base_test_loss": test_loss(resolve_pipeline_folder(model_cfg.base, model_cfg.revision)),
            "num_test": len(test_set)}


@torch.no_grad()
def _supervised_results(cache_dir, model_dir, cfg, seed, task, record, device) -> dict[str, Any]:
    from trainflow.data.supervised_cache import SupervisedCache
    from trainflow.metrics import supervised as sm
    from trainflow.tasks.supervised import load_supervised_model, model_outputs

    test_set = SupervisedCache(cache_dir, "test")
    if len(test_set) == 0:
        raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
    model, meta = load_supervised_model(model_dir)
    model = model.to(device)
    outputs, truths = [], []
    for batch in DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False):
        outputs.append(model_outputs(model, meta, batch["inputs"].to(device)).cpu())
        truths.append(batch["label"] if task == "classification" else batch["targets"] if task == "regression" else batch["mask"])
    predicted, truth = torch.cat(outputs), torch.cat(truths)
    if task == "classification":
        metric_fn = functools.partial(sm.classification_metrics, class_names=meta["class_names"])
        arrays = {"probabilities": predicted.double(), "labels": truth}
    elif task == "regression":
        metric_fn = functools.partial(sm.regression_metrics, target_names=meta["target_names"])
        arrays = {"predictions": predicted.double(), "targets": truth.double()}
    else:
        metric_fn = functools.partial(sm.segmentation_metrics, class_names=meta["class_names"])
        arrays = {"predicted": predicted.argmax(1), "masks": truth}
    results = dict(metric_fn(**arrays))
    if cfg.bootstrap_resamples:
        keys = [k for k in HEADLINE_METRICS[task] if isinstance(results.get(k), float)]
        intervals = sm.bootstrap_intervals(metric_fn, arrays, keys, n_resamples=cfg.bootstrap_resamples, seed=seed)
        for key, (low, high) in intervals.items():
            results[f"{key}_ci_low"], results[f"{key}_ci_high"] = low, high
    if task == "regression" and meta.get("kind") == "table":
        results.update(_linear_baseline(cache_dir, meta, metric_fn))
    results["num_test"] = len(test_set)
    return results


def _linear_baseline(cache_dir, meta, metric_fn) -> dict[str, float]:
    """scikit-learn's LinearRegression fitted on the same train split, scored on the same test split."""
    from sklearn.linear_model import LinearRegression

    from trainflow.data.supervised_cache import SupervisedCache

    train, test = SupervisedCache(cache_dir, "train"), SupervisedCache(cache_dir, "test")
    fitted = LinearRegression().fit(train.arrays["features"].double().numpy(), train.arrays["targets"].double().numpy())
    predictions = torch.from_numpy(fitted.predict(test.arrays["features"].double().numpy()))
    baseline = metric_fn(predictions=predictions, targets=test.arrays["targets"].double())
    return {f"baseline_linear_{k}": baseline[k] for k in ("r2", "rmse", "mae", "mse") if isinstance(baseline.get(k), float)}
