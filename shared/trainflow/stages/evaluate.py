"""Stage 4: score the best checkpoint on the untouched test split, and the last one beside it.

text_to_image: per-record test denoising loss of the fine-tuned (best), last and base models.
Supervised: the task's metrics with bootstrap intervals for the best and last checkpoints.
Outputs: the numbers (Metrics), per-record outputs for later comparisons (predictions),
a self-contained HTML report, a Markdown summary and, for classifiers, KFP ClassificationMetrics.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_json, atomic_write_text
from trainflow.compare.checkpoint_models import LastCheckpoint, load_checkpoint_weights, read_last_checkpoint
from trainflow.compare.paired import compare_arrays
from trainflow.compare.record_outputs import (
    HEADLINE_METRICS, RecordOutputs, metric_function, save_record_outputs, test_record_ids,
)
from trainflow.config import EvaluateConfig, ModelConfig, TrainConfig, parse_section
from trainflow.data.cache_attrs import read_cache_dataset_hash
from trainflow.devices import pick_device
from trainflow.errors import UserFacingError
from trainflow.metrics.bootstrap import bootstrap_intervals
from trainflow.training.run_training import TRAINING_RECORD

TEST_SEED_OFFSET = 2_000_003
RECORD_FACTS = ("best_step", "best_epoch", "best_value", "monitor", "steps_run", "epochs_run", "stop_reason", "stop_kind")


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
    metrics: ArtifactLike, task: str = "text_to_image", report: ArtifactLike | None = None,
    summary: ArtifactLike | None = None, predictions: ArtifactLike | None = None,
    classification: ArtifactLike | None = None,
) -> dict[str, Any]:
    """Score the train stage's model (its best checkpoint) and its last checkpoint on the test split.

    Inputs: the build_cache output, the train output (model folder with trainflow_training.json),
    the model and evaluate sections, the run seed, the task.
    Outputs: `metrics` (numbers in metadata, everything as JSON in its file: intervals, per-class
    values, best-vs-last comparison, the last checkpoint's scores or why they are absent);
    optional `predictions` (folder, see trainflow.compare.record_outputs), `report` (HTML),
    `summary` (Markdown), `classification` (KFP ClassificationMetrics; classifiers only).
    Raises UserFacingError on an empty test split or a model folder not written by the train stage.
    """
    cfg: EvaluateConfig = parse_section(EvaluateConfig, config, "the evaluate section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    outputs = [a for a in (report, summary, predictions, classification) if a is not None]
    with timed_stage("evaluate", metrics, *outputs):
        record = read_training_record(model_dir)
        device = pick_device(cfg.device)
        last = _last_checkpoint(record, cache_dir, cfg)
        if task == "text_to_image":
            scored = _text_to_image_outputs(cache_dir, model_dir, model_cfg, cfg, seed, record, device, last)
        else:
            scored = _supervised_outputs(cache_dir, model_dir, cfg, device, last)
        scored.seed = seed
        results = _scores(scored, cfg, seed, last)
        if task == "regression" and _table_model(model_dir):
            results.update(_linear_baseline(cache_dir, metric_function(task, scored.names)))
        facts = {key: record.get(key) for key in RECORD_FACTS}
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.metadata.update({**numbers, **{k: v for k, v in facts.items() if v is not None}})
        atomic_write_json(metrics.path, {**results, **facts})
        _write_views(scored, results, record, report, summary, predictions, classification)
        shown = ", ".join(f"{k} {results[k]:.4g}" for k in HEADLINE_METRICS[task] + [f"last_{k}" for k in HEADLINE_METRICS[task]]
                          if isinstance(results.get(k), float))
        print(f"evaluate: {shown}; best step {record['best_step']} of {record['steps_run']} ({record['stop_reason']})")
    return {**results, **facts}


def _last_checkpoint(record: dict[str, Any], cache_dir: str, cfg: EvaluateConfig) -> LastCheckpoint:
    if record.get("best_step") is not None and record.get("best_step") == record.get("steps_run"):
        return LastCheckpoint(None, None, record["steps_run"])  # the best is the last: its scores are the best's
    if not cfg.score_last_checkpoint:
        return LastCheckpoint(None, "evaluate.score_last_checkpoint is off")
    return read_last_checkpoint(record, read_cache_dataset_hash(cache_dir))


def _scores(scored: RecordOutputs, cfg: EvaluateConfig, seed: int, last: LastCheckpoint) -> dict[str, Any]:
    """Best-checkpoint metrics with intervals; the last checkpoint's (and the base's) beside them, with paired comparisons."""
    metric_fn = metric_function(scored.task, scored.names)
    results: dict[str, Any] = {**metric_fn(**scored.arrays("best")), "num_test": len(scored.record_ids)}
    headline = [k for k in HEADLINE_METRICS[scored.task] if isinstance(results.get(k), float)]
    if cfg.bootstrap_resamples:
        intervals = bootstrap_intervals(metric_fn, scored.arrays("best"), headline, n_resamples=cfg.bootstrap_resamples, seed=seed)
        for key, (low, high) in intervals.items():
            results[f"{key}_ci_low"], results[f"{key}_ci_high"] = low, high
    if "base" in scored.outputs:
        results.update({f"base_{k}": v for k, v in metric_fn(**scored.arrays("base")).items() if k in headline})
        results["vs_base"] = _comparisons(metric_fn, scored, ("best", "fine-tuned"), ("base", "base"), headline, cfg, seed)
    if last.step is not None:
        results["last_step"] = last.step
    source = "last" if "last" in scored.outputs else "best" if last.reason is None else None
    if source is None:
        results["last_checkpoint_skipped"] = last.reason
        return results
    last_metrics = metric_fn(**scored.arrays(source))
    results.update({f"last_{k}": last_metrics[k] for k in headline if isinstance(last_metrics.get(k), float)})
    results["last_metrics"] = last_metrics
    if source == "best":
        results["last_is_best"] = True
    else:
        results["best_vs_last"] = _comparisons(metric_fn, scored, ("best", "best"), ("last", "last"), headline, cfg, seed)
    return results


def _comparisons(metric_fn, scored: RecordOutputs, a: tuple[str, str], b: tuple[str, str], keys: list[str],
                 cfg: EvaluateConfig, seed: int) -> dict[str, Any]:
    """Paired comparisons of sources a and b ((source, name in verdicts)) on each key."""
    if not cfg.bootstrap_resamples:
        return {}
    compared: dict[str, Any] = {}
    for key in keys:
        try:
            compared[key] = compare_arrays(metric_fn, scored.arrays(a[0]), scored.arrays(b[0]), key,
                                           n_resamples=cfg.bootstrap_resamples, seed=seed, names=(a[1], b[1]))
        except UserFacingError as error:  # undefined in too many resamples: say so instead of a number
            compared[key] = {"skipped": str(error)}
    return compared


def _write_views(scored, results, record, report, summary, predictions, classification) -> None:
    from trainflow.report.evaluation_report import evaluation_html, evaluation_markdown

    if predictions is not None:
        save_record_outputs(predictions.path, scored)
        predictions.metadata.update({"task": scored.task, "records": len(scored.record_ids), "sources": list(scored.outputs)})
    if classification is not None and scored.task == "classification":
        from trainflow.report.kfp_classification import log_classification_metrics

        log_classification_metrics(classification, results["confusion_matrix"], scored.outputs["best"], scored.truth,
                                   scored.names)
    if report is not None:
        atomic_write_text(report.path, evaluation_html(scored, results, record))
    if summary is not None:
        atomic_write_text(summary.path, evaluation_markdown(scored.task, results, record))


def _supervised_outputs(cache_dir, model_dir, cfg: EvaluateConfig, device, last: LastCheckpoint) -> RecordOutputs:
    from trainflow.compare.record_outputs import supervised_test_outputs
    from trainflow.tasks.supervised import load_supervised_model

    model, meta = load_supervised_model(model_dir)
    best, truth = supervised_test_outputs(model, meta, cache_dir, cfg.batch_size, device)
    outputs = {"best": best}
    if last.checkpoint is not None:
        try:
            rebuilt = load_checkpoint_weights(load_supervised_model(model_dir)[0], last.checkpoint)
            outputs["last"] = supervised_test_outputs(rebuilt, meta, cache_dir, cfg.batch_size, device)[0]
        except ValueError as error:
            last.reason, last.checkpoint = f"the last checkpoint does not fit the model ({error})", None
    names = meta["target_names"] if meta["task"] == "regression" else meta["class_names"]
    return RecordOutputs(meta["task"], list(names), truth, outputs, test_record_ids(cache_dir),
                         read_cache_dataset_hash(cache_dir))


def _text_to_image_outputs(cache_dir, model_dir, model_cfg, cfg, seed, record, device, last: LastCheckpoint) -> RecordOutputs:
    from diffusers import DDPMScheduler
    from torch.utils.data import default_collate

    from trainflow.diffusion.denoising_loss import fixed_noise_record_losses
    from trainflow.diffusion.latent_cache import CachedLatents, read_cache_attrs
    from trainflow.diffusion.model_families import detect_family
    from trainflow.diffusion.model_loading import load_trained_parts, resolve_pipeline_folder
    from trainflow.tasks.text_to_image import DiffusionModel, check_cache_family
    from trainflow.training.bucketed_batches import bucket_batches
    from trainflow.training.task import move_to_device

    test_set = CachedLatents(cache_dir, "test")
    if len(test_set) == 0:
        raise UserFacingError("the test split is empty; ingest more records or change ingest.split")
    attrs = read_cache_attrs(cache_dir)
    scaling = float(attrs["scaling_factor"])
    scheduler = DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler")
    family = check_cache_family(detect_family(Path(model_dir), model_cfg.family), attrs, Path(cache_dir))

    @torch.no_grad()
    def record_losses(unet, text_encoders) -> torch.Tensor:
        """Per-record loss with the noise and timestep fixed by each record's index, identical for every model."""
        model = DiffusionModel(unet, *(text_encoders or [None]), family=family).to(device).eval()
        losses = torch.zeros(len(test_set), dtype=torch.float64)
        with autocast_for(record.get("mixed_precision", "no"), device):
            for indices in bucket_batches(test_set, range(len(test_set)), cfg.batch_size):
                batch = move_to_device(default_collate([test_set[i] for i in indices]), device)
                states, added = model.batch_conditioning(batch)
                losses[indices] = fixed_noise_record_losses(
                    model.unet, scheduler, batch["moments"], states, batch["index"], scaling, seed + TEST_SEED_OFFSET,
                    added, batch.get("loss_mask")).double().cpu()
        return losses

    outputs = {"best": record_losses(*load_trained_parts(Path(model_dir))),
               "base": record_losses(*load_trained_parts(resolve_pipeline_folder(model_cfg.base, model_cfg.revision)))}
    if last.checkpoint is not None:
        from trainflow.tasks import build_task

        train_cfg = parse_section(TrainConfig, record["train_config"], "the training record's train section")
        try:
            model = load_checkpoint_weights(build_task("text_to_image", Path(cache_dir), model_cfg, train_cfg, seed).build_model(),
                                            last.checkpoint)
            outputs["last"] = record_losses(model.unet, model.text_encoders)
        except ValueError as error:
            last.reason, last.checkpoint = f"the last checkpoint does not fit the model ({error})", None
    return RecordOutputs("text_to_image", [], None, outputs, test_record_ids(cache_dir), read_cache_dataset_hash(cache_dir))


def _table_model(model_dir: str) -> bool:
    config = Path(model_dir) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("meta", {}).get("kind") == "table"


def _linear_baseline(cache_dir, metric_fn) -> dict[str, float]:
    """scikit-learn's LinearRegression fitted on the same train split, scored on the same test split."""
    from sklearn.linear_model import LinearRegression

    from trainflow.data.supervised_cache import SupervisedCache

    train, test = SupervisedCache(cache_dir, "train"), SupervisedCache(cache_dir, "test")
    fitted = LinearRegression().fit(train.arrays["features"].double().numpy(), train.arrays["targets"].double().numpy())
    predictions = torch.from_numpy(fitted.predict(test.arrays["features"].double().numpy()))
    baseline = metric_fn(predictions=predictions, targets=test.arrays["targets"].double())
    return {f"baseline_linear_{k}": baseline[k] for k in ("r2", "rmse", "mae", "mse") if isinstance(baseline.get(k), float)}
