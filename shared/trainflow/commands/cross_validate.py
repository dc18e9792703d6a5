"""`trainflow cross-validate --config C [--compare D]`: k-fold cross-validation here, and a fair comparison."""

from __future__ import annotations

import argparse
from typing import Any


def add_cross_validate_parser(verbs: Any) -> None:
    cv = verbs.add_parser(
        "cross-validate", help="train and score every fold of a k-fold split; mean, std and interval across folds",
        description="Ingest once with k-fold splits (folds.json: kfold, stratified_kfold, or grouped with "
                    "ingest.group_column), then for each fold (and repeat) train on the other folds, stop early on an "
                    "inner validation part, and score the held-out fold with the task's metrics. Prints each fold, "
                    "the mean, standard deviation and t-interval across folds, and writes the out-of-fold predictions. "
                    "With --compare, a second config runs on the same folds and each metric gets the corrected "
                    "resampled t-test (Nadeau & Bengio), which accounts for the folds' overlapping training sets. With "
                    "cross_validation.nested: true, each fold first runs the tune section's study on its own training "
                    "records (nested cross-validation).")
    cv.add_argument("--config", required=True, help="run YAML (classification, regression or segmentation)")
    cv.add_argument("--compare", metavar="CONFIG", help="a second run YAML to compare with on the same folds")
    cv.add_argument("--state-dir", default=".trainflow", help="where folds, models and summaries go (default: .trainflow)")
    cv.add_argument("--folds", type=int, help="override cross_validation.folds")
    cv.add_argument("--repeats", type=int, help="override cross_validation.repeats (repeated k-fold)")
    cv.add_argument("--nested", action="store_true", help="tune inside each outer fold with the config's tune section "
                    "(cross_validation.nested: true)")
    cv.add_argument("--fresh", action="store_true", help="delete this run's folds first instead of resuming")
    cv.add_argument("--json", metavar="PATH", help="also write the summary (and comparison) as JSON")
    cv.add_argument("--verbose", action="store_true", help="show every fold's training lines")
    cv.add_argument("--compile", metavar="YAML", help="write the cluster pipeline (folds in a ParallelFor, "
                    "cross_validation.workers at a time) to YAML instead of running here")
    cv.set_defaults(handler=run_cross_validate)


def _print(results: dict[str, Any]) -> None:
    for name, row in results["metrics"].items():
        interval = (f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]" if "ci_low" in row else row.get("interval_skipped", ""))
        print(f"cross-validate: {name}: mean {row['mean']:.4f}, std {row.get('std', float('nan')):.4f}, "
              f"{row['confidence']:.0%} interval {interval} over {row['folds']} folds")
    for repeat, scores in results["out_of_fold"].items():
        print(f"cross-validate: out-of-fold (repeat {repeat}, all records pooled): "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"cross-validate: {results['interval']}")
    if results.get("nested_note"):
        print(f"cross-validate: nested: {results['nested_note']}")
    print(f"cross-validate: summary {results['folder']}/summary.json, out-of-fold predictions {results['folder']}/oof")


def cv_config(path: str, args: argparse.Namespace):
    """The config with --folds/--repeats/--nested applied to its cross_validation section, validated again."""
    from trainflow.config import RunConfig, load_config, parse_section, section_payload

    config = load_config(path)
    given = {key: value for key, value in (("folds", args.folds), ("repeats", args.repeats),
                                           ("nested", True if args.nested else None)) if value is not None}
    if not given:
        return config
    payload = section_payload(config)
    payload["cross_validation"] = {**(payload.get("cross_validation") or {}), **given}
    return parse_section(RunConfig, payload, f"{path} with {', '.join('--' + key for key in given)}")


def run_cross_validate(args: argparse.Namespace) -> int:
    from trainflow.atomic_files import atomic_write_json
    from trainflow.config import load_config
    from trainflow.experiments.cross_validation_run import compare_configurations, cross_validate_locally

    if args.compile:
        from pathlib import Path

        from trainflow.kubeflow.pipeline_package import compile_pipeline_package

        written = compile_pipeline_package(load_config(args.config, check_local_paths=False), "cross-validation",
                                           Path(args.compile))
        print(f"trainflow: wrote {written} (cross-validation pipeline)")
        return 0
    results = cross_validate_locally(cv_config(args.config, args), args.state_dir, fresh=args.fresh, verbose=args.verbose)
    _print(results)
    output: dict[str, Any] = {"a": results}
    if args.compare:
        other = cross_validate_locally(cv_config(args.compare, args), args.state_dir, fresh=args.fresh, verbose=args.verbose)
        _print(other)
        comparison = compare_configurations(results, other)
        output.update({"b": other, "comparison": comparison})
        for name, test in comparison.items():
            if "skipped" in test:
                print(f"cross-validate: {name}: {test['skipped']}")
                continue
            print(f"cross-validate: {name}: {results['run_name']} - {other['run_name']} = {test['mean_difference']:+.4f}, "
                  f"t {test['t']:.3f} (df {test['df']}), p {test['p_value']:.4f} — {test['test']}")
    if args.json:
        atomic_write_json(args.json, output if args.compare else results)
    return 0
