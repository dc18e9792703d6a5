"""Stage 4: score the best checkpoint on the untouched test split, and the last one beside it.

The task scores the test split record by record (trainflow.tasks: `test_outputs`, e.g. class
probabilities, or per-record denoising losses of the fine-tuned, last and base models); this stage
turns those into metrics with bootstrap intervals and paired comparisons, and writes them: the
numbers (Metrics), per-record outputs for later comparisons (predictions), a self-contained HTML
report, a Markdown summary and the task's KFP visualisation (classifiers: ClassificationMetrics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainflow.artifacts import ArtifactLike, timed_stage
from trainflow.atomic_files import atomic_write_json, atomic_write_text
from trainflow.config import EvaluateConfig, ModelConfig, parse_section
from trainflow.data.cache.attrs import read_cache_dataset_hash
from trainflow.devices import pick_device
from trainflow.errors import UserFacingError
from trainflow.evaluation.bootstrap import bootstrap_intervals
from trainflow.evaluation.checkpoint_models import LastCheckpoint, read_last_checkpoint
from trainflow.evaluation.paired import compare_arrays
from trainflow.evaluation.record_outputs import RecordOutputs, save_record_outputs
from trainflow.registry.pipeline_run import log_numbers, stage_run
from trainflow.tasks import TaskDefinition, TestRequest, get_task
from trainflow.training.run_training import TRAINING_RECORD

RECORD_FACTS = ("best_step", "best_epoch", "best_value", "monitor", "steps_run", "epochs_run", "stop_reason", "stop_kind")


def read_training_record(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        raise UserFacingError(f"{path} is missing; the model input must be the output of the train stage")
    return json.loads(path.read_text())


def evaluate(
    cache_dir: str, model_dir: str, model_config: dict[str, Any], config: dict[str, Any], seed: int,
    metrics: ArtifactLike, task: str, report: ArtifactLike | None = None,
    summary: ArtifactLike | None = None, predictions: ArtifactLike | None = None,
    classification: ArtifactLike | None = None, pipeline_run_id: str = "",
) -> dict[str, Any]:
    """Score the train stage's model (its best checkpoint) and its last checkpoint on the test split.

    Inputs: the build_cache output, the train output (model folder with trainflow_training.json),
    the model and evaluate sections, the run seed, the task.
    Outputs: `metrics` (numbers in metadata, everything as JSON in its file: intervals, per-class
    values, best-vs-last comparison, the last checkpoint's scores or why they are absent);
    optional `predictions` (folder, see trainflow.evaluation.record_outputs), `report` (HTML),
    `summary` (Markdown), `classification` (KFP ClassificationMetrics; classifiers only).
    With MLFLOW_TRACKING_URI and `pipeline_run_id` (the KFP run id) the numbers also go to the `evaluate`
    child run of the pipeline run's MLflow parent run (trainflow.registry.pipeline_run).
    Raises UserFacingError on an empty test split or a model folder not written by the train stage.
    """
    cfg: EvaluateConfig = parse_section(EvaluateConfig, config, "the evaluate section")
    model_cfg: ModelConfig = parse_section(ModelConfig, model_config, "the model section")
    outputs = [a for a in (report, summary, predictions, classification) if a is not None]
    with timed_stage("evaluate", metrics, *outputs):
        definition = get_task(task)
        record = read_training_record(model_dir)
        last = _last_checkpoint(record, cache_dir, cfg)
        scored = definition.test_outputs(TestRequest(Path(cache_dir), Path(model_dir), model_cfg, cfg, seed, record,
                                                     pick_device(cfg.device), last))
        scored.seed = seed
        results = _scores(definition, scored, cfg, seed, last)
        results.update(definition.extra_results(Path(cache_dir), Path(model_dir), definition.metric_function(scored.names)))
        facts = {key: record.get(key) for key in RECORD_FACTS}
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.metadata.update({**numbers, **{k: v for k, v in facts.items() if v is not None}})
        atomic_write_json(metrics.path, {**results, **facts})
        _write_views(definition, scored, results, record, report, summary, predictions, classification)
        keys = definition.headline_keys()
        shown = ", ".join(f"{k} {results[k]:.4g}" for k in keys + [f"last_{k}" for k in keys] if isinstance(results.get(k), float))
        print(f"evaluate: {shown}; best step {record['best_step']} of {record['steps_run']} ({record['stop_reason']})")
        with stage_run(pipeline_run_id, "evaluate") as tracked:
            if tracked is not None:
                log_numbers(*tracked, {**numbers, **facts})
    return {**results, **facts}


def _last_checkpoint(record: dict[str, Any], cache_dir: str, cfg: EvaluateConfig) -> LastCheckpoint:
    if record.get("best_step") is not None and record.get("best_step") == record.get("steps_run"):
        return LastCheckpoint(None, None, record["steps_run"])  # the best is the last: its scores are the best's
    if not cfg.score_last_checkpoint:
        return LastCheckpoint(None, "evaluate.score_last_checkpoint is off")
    return read_last_checkpoint(record, read_cache_dataset_hash(cache_dir))


def _scores(task: TaskDefinition, scored: RecordOutputs, cfg: EvaluateConfig, seed: int, last: LastCheckpoint) -> dict[str, Any]:
    """Best-checkpoint metrics with intervals; the last checkpoint's (and the task's reference's) beside them, with paired comparisons."""
    metric_fn = task.metric_function(scored.names)
    results: dict[str, Any] = {**metric_fn(**scored.arrays("best")), "num_test": len(scored.record_ids)}
    headline = [k for k in task.headline_keys() if isinstance(results.get(k), float)]
    if cfg.bootstrap_resamples:
        intervals = bootstrap_intervals(metric_fn, scored.arrays("best"), headline, n_resamples=cfg.bootstrap_resamples, seed=seed)
        for key, (low, high) in intervals.items():
            results[f"{key}_ci_low"], results[f"{key}_ci_high"] = low, high
    reference = task.reference
    if reference is not None and reference.source in scored.outputs:
        results.update({f"{reference.prefix}{k}": v for k, v in metric_fn(**scored.arrays(reference.source)).items()
                        if k in headline})
        results[f"vs_{reference.source}"] = _comparisons(metric_fn, scored, ("best", task.trained_label),
                                                         (reference.source, reference.column or reference.source),
                                                         headline, cfg, seed)
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


def _write_views(task: TaskDefinition, scored, results, record, report, summary, predictions, classification) -> None:
    from trainflow.report.evaluation_report import evaluation_html, evaluation_markdown

    if predictions is not None:
        save_record_outputs(predictions.path, scored)
        predictions.metadata.update({"task": scored.task, "records": len(scored.record_ids), "sources": list(scored.outputs)})
    if classification is not None:
        task.log_kfp_metrics(classification, scored, results)
    if report is not None:
        atomic_write_text(report.path, evaluation_html(scored, results, record))
    if summary is not None:
        atomic_write_text(summary.path, evaluation_markdown(scored.task, results, record))
