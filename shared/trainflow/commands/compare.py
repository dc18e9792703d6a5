"""`trainflow compare`: two models of one task on one config's test split, per record, with a paired bootstrap.

Like the local run, this drives stages (ingest and cache, to rebuild a test split), so it is a
command, not part of trainflow.evaluation. The task loads each model folder back and scores it.

The test split is the one the pipeline evaluates on: either a build_cache output given
with `--cache`, or rebuilt from the config (ingest + cache into a temporary folder;
the split is seeded, so the same data and config give the same test records).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from trainflow.registry.champion import resolve_model_reference
from trainflow.evaluation.paired import compare_arrays
from trainflow.evaluation.record_outputs import RecordOutputs, test_record_ids
from trainflow.errors import UserFacingError


def rebuild_test_cache(config, folder: Path) -> Path:
    """Run the config's ingest and cache stages into `folder`; returns the cache folder."""
    from trainflow.artifacts import LocalArtifact
    from trainflow.config import section_payload
    from trainflow.stages.build_cache import build_cache
    from trainflow.stages.ingest_split import ingest_split

    dataset, cache = LocalArtifact(str(folder / "dataset")), LocalArtifact(str(folder / "cache"))
    ingest_split(section_payload(config.ingest), config.seed, dataset, LocalArtifact(str(folder / "ingest-report.md")),
                 task=config.task, model_base=config.model.base)
    build_cache(dataset.path, section_payload(config.model), section_payload(config.cache), cache, task=config.task)
    return Path(cache.path)


def compare_models(config_path: str, model_a: str, model_b: str, cache_dir: str | None = None,
                   metrics: list[str] | None = None, resamples: int | None = None, confidence: float = 0.95,
                   device: str = "auto") -> dict[str, Any]:
    """Score models a and b (folders or models:/ references) on the test split and compare them per metric.

    Output: {task, records, cache, a, b, comparisons: {metric: compare_arrays result}}.
    Raises UserFacingError for a task without per-record outputs to compare, models of another
    task or class set, or a metric the task does not compute.
    """
    from trainflow.config import load_config
    from trainflow.devices import pick_device
    from trainflow.registry.tracking import default_tracking_uri
    from trainflow.tasks import get_task

    config = load_config(config_path)
    task = get_task(config.task)
    if not task.compares_per_record:
        raise UserFacingError(f"trainflow compare works on tasks that keep per-record test outputs; {config_path} is "
                              f"{config.task} (its evaluate stage compares the fine-tuned and base models)")
    tracking_uri = config.registration.tracking_uri or default_tracking_uri()
    keys = metrics or task.headline_keys()[:1]
    with tempfile.TemporaryDirectory(prefix="trainflow-compare-") as scratch:
        cache = Path(cache_dir) if cache_dir else rebuild_test_cache(config, Path(scratch))
        scored, names = {}, None
        for label, reference in (("a", model_a), ("b", model_b)):
            folder = resolve_model_reference(reference, tracking_uri, Path(scratch) / label)
            try:
                predictor = task.load_for_prediction(folder)
            except UserFacingError as error:
                raise UserFacingError(f"model {label} ({reference}): {error}; both must be {config.task} models") from None
            if names is not None and predictor.names != names:
                raise UserFacingError(f"model {label} ({reference}) is a {config.task} model over {predictor.names}; "
                                      f"both must be {config.task} models over the same classes or targets")
            names = predictor.names
            scored[label] = predictor.record_outputs(cache, config.evaluate.batch_size, pick_device(device))
        truth = scored["a"][1]
        outputs = RecordOutputs(config.task, names or [], truth, {k: v[0] for k, v in scored.items()},
                                test_record_ids(cache), "")
    metric_fn = task.metric_function(outputs.names)
    n_resamples = resamples or config.evaluate.bootstrap_resamples or 1000
    comparisons = {key: compare_arrays(metric_fn, outputs.arrays("a"), outputs.arrays("b"), key, n_resamples=n_resamples,
                                       seed=config.seed, confidence=confidence) for key in keys}
    return {"task": config.task, "records": len(outputs.record_ids), "cache": str(cache_dir or "rebuilt from the config"),
            "a": model_a, "b": model_b, "output": task.output_names[0], "comparisons": comparisons}


def comparison_lines(result: dict[str, Any]) -> list[str]:
    """What `trainflow compare` prints: one line per metric with the difference a − b and its interval."""
    lines = [f"compare: {result['records']} test records ({result['cache']}); a = {result['a']}, b = {result['b']}"]
    for key, c in result["comparisons"].items():
        direction = "lower" if c["lower_is_better"] else "higher"
        lines.append(f"{key} ({direction} is better): a {c['a']:.4f}, b {c['b']:.4f}, a − b {c['difference']:+.4f} "
                     f"({c['confidence']:.0%} interval {c['low']:+.4f} to {c['high']:+.4f}), P(a better) {c['p_better']:.3f}: {c['verdict']}")
    return lines


def write_comparison_json(result: dict[str, Any], path: str | Path) -> None:
    from trainflow.atomic_files import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=1) + "\n")


def compare_command(args: argparse.Namespace) -> int:
    result = compare_models(args.config, args.a, args.b, cache_dir=args.cache, metrics=args.metric,
                            resamples=args.resamples, confidence=args.confidence, device=args.device)
    print("\n".join(comparison_lines(result)))
    if args.json:
        write_comparison_json(result, args.json)
    return 0
