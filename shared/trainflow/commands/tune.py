"""`trainflow tune --config C`: search the config's `tune` space here, then refit, evaluate and register the best."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainflow.errors import UserFacingError


def add_tune_parser(verbs: Any) -> None:
    tune = verbs.add_parser(
        "tune", help="hyperparameter search over the config's tune section (Optuna), then refit the best",
        description="Split and cache the data once, run the tune section's study (TPE, random, grid or CMA-ES; "
                    "median or successive-halving/Hyperband pruning on the validation reports) with N workers on "
                    "one Optuna journal under <state-dir>/tuning/<study>/, then train the best trial's configuration "
                    "as the final model, score it on the test split (which the search never sees) and register it "
                    "past the gates. Re-running the same config continues the study where a killed run stopped.")
    tune.add_argument("--config", required=True, help="run YAML with a tune section (see README, Experiments)")
    tune.add_argument("--state-dir", default=".trainflow", help="where the study, trials and MLflow store go (default: .trainflow)")
    tune.add_argument("--trials", type=int, help="override tune.trials")
    tune.add_argument("--workers", type=int, help="override tune.workers (trial processes on this machine)")
    tune.add_argument("--sampler", choices=["tpe", "random", "grid", "cmaes"], help="override tune.sampler")
    tune.add_argument("--pruner", choices=["median", "successive_halving", "hyperband", "none"], help="override tune.pruner")
    tune.add_argument("--wall-time", type=float, metavar="MINUTES", help="override tune.wall_time_minutes (per worker)")
    tune.add_argument("--refit", choices=["train", "train_val"], help="override tune.refit: train the best configuration on "
                      "train (early stopping on val) or on train+val for the best trial's epochs")
    tune.add_argument("--fresh", action="store_true", help="delete the study (trials, checkpoints) and start over")
    tune.add_argument("--no-refit", action="store_true", help="only search: skip the refit, evaluation and registration")
    tune.add_argument("--report", metavar="DIR", help="write the HTML report and its PNG figures here (default: <study>/report)")
    tune.add_argument("--json", metavar="PATH", help="also write the study results (trial table, best, refit) as JSON")
    tune.add_argument("--verbose", action="store_true", help="show every trial's training lines")
    tune.add_argument("--compile", metavar="YAML", help="write the cluster pipeline (tune.workers trial workers in a "
                      "ParallelFor on the workspace PVC) to YAML instead of running here")
    tune.set_defaults(handler=run_tune)


def tuned_config(path: str, overrides: dict[str, Any]):
    """The config with the command-line overrides (tune.<key>: value, None = not given) applied, validated again."""
    from trainflow.config import RunConfig, load_config, parse_section, section_payload

    config = load_config(path)
    if config.tune is None:
        raise UserFacingError(f"{path} has no tune section; add one naming the fields to search (see README, Experiments)")
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return config
    payload = section_payload(config)
    payload["tune"].update(given)
    flags = ", ".join(f"--{key.replace('_minutes', '').replace('_', '-')}" for key in given)
    return parse_section(RunConfig, payload, f"{path} with {flags}")


def run_tune(args: argparse.Namespace) -> int:
    from trainflow.atomic_files import atomic_write_json
    from trainflow.experiments.tuning_report import print_study_summary, write_tuning_report
    from trainflow.experiments.tuning_run import tune_locally

    if args.compile:
        from trainflow.config import load_config
        from trainflow.kubeflow.pipeline_package import compile_pipeline_package

        config = load_config(args.config, check_local_paths=False)  # paths are the pods' paths
        if config.tune is None:
            raise UserFacingError(f"{args.config} has no tune section; add one naming the fields to search")
        print(f"trainflow: wrote {compile_pipeline_package(config, 'tuning', Path(args.compile))} (tuning pipeline, "
              f"{config.tune.workers} trial workers)")
        return 0
    config = tuned_config(args.config, {"trials": args.trials, "workers": args.workers, "sampler": args.sampler,
                                        "pruner": args.pruner, "wall_time_minutes": args.wall_time, "refit": args.refit})
    outcome = tune_locally(config, args.state_dir, fresh=args.fresh, verbose=args.verbose, refit=not args.no_refit)
    report_dir = Path(args.report) if args.report else Path(outcome.request.study_dir) / "report"
    report = write_tuning_report(outcome, report_dir)
    print_study_summary(outcome.results, report)
    if args.json:
        atomic_write_json(args.json, outcome.results)
    return 0
