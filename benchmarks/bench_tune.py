"""`make bench-tune`: TPE with median pruning vs random search vs a grid, at equal trial budgets.

On scikit-learn's digits (a small CNN classifier, val_accuracy) and diabetes (an MLP regressor, val_mse), each
strategy runs the same number of trials through trainflow's own trial worker (`run_worker`, one worker, in this
process) on one split and cache per dataset; only the sampler's seed changes between bench seeds. For each
(dataset, seed) it records the best validation value each strategy reaches, the CPU-seconds its trials spent
(time.process_time around every trial, all threads of this process; torch runs one thread) and the share of
trials pruned. compute_ratio = the CPU-seconds TPE+pruning has spent when its best first reaches random search's
final best, divided by random search's total; "not reached" when it never does (target: <= 0.6).

    python benchmarks/bench_tune.py [--trials 24] [--tpe-trials N] [--seeds 0 1 2 3 4] [--datasets digits diabetes] [--json PATH]
    python benchmarks/bench_tune.py --smoke     # tiny data and budget: checks the bench runs (tests/test_bench_tune.py)

The last line: bench-tune: tpe_pruned_best=... random_best=... compute_ratio=... (each as dataset:value).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from trainflow.config import RunConfig, parse_section, section_payload

STRATEGIES = ("tpe_pruned", "random", "grid")


def digits_payload(smoke: bool) -> dict[str, Any]:
    return {
        "run_name": "bench-tune-digits", "task": "classification", "seed": 0,
        "ingest": {"sklearn_dataset": "digits", "resolution": 8, "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                   **({"max_records": 240} if smoke else {})},
        "model": {"architecture": "small_cnn", "width": 8},
        "train": {"max_epochs": 2 if smoke else 8, "batch_size": 64, "optimizer": {"name": "adamw", "learning_rate": 3e-3},
                  "schedule": {"name": "constant"}, "mixed_precision": "no", "device": "cpu",
                  "early_stopping": {"monitor": "val_accuracy", "patience": None},
                  "checkpoints": {"keep_top_k": 1, "total_limit": 2}, "logging": {"tensorboard": False}},
        "evaluate": {"bootstrap_resamples": 0}, "register": {"model_name": "bench-tune-digits"},
        "tune": {"params": {
            "train.optimizer.learning_rate": {"float": [1e-4, 3e-2], "log": True, "grid_points": 4},
            "train.optimizer.weight_decay": {"float": [1e-5, 1e-1], "log": True, "grid_points": 2},
            "train.batch_size": {"categorical": [32, 128, 256]}}},
    }


def diabetes_payload(smoke: bool) -> dict[str, Any]:
    return {
        "run_name": "bench-tune-diabetes", "task": "regression", "seed": 0,
        "ingest": {"sklearn_dataset": "diabetes", "split": {"train": 0.7, "val": 0.15, "test": 0.15}},
        "model": {"architecture": "mlp", "hidden_sizes": [16], "dropout": 0.1},
        "train": {"max_epochs": 3 if smoke else 40, "batch_size": 32, "optimizer": {"name": "adamw", "learning_rate": 3e-3},
                  "schedule": {"name": "constant"}, "mixed_precision": "no", "device": "cpu",
                  "validation": {"every_epoch": False, "every_n_steps": 10},
                  "early_stopping": {"monitor": "val_mse", "patience": None},
                  "checkpoints": {"keep_top_k": 1, "total_limit": 2}, "logging": {"tensorboard": False}},
        "evaluate": {"bootstrap_resamples": 0}, "register": {"model_name": "bench-tune-diabetes"},
        "tune": {"params": {
            "train.optimizer.learning_rate": {"float": [1e-3, 1e-1], "log": True, "grid_points": 4},
            "train.optimizer.weight_decay": {"float": [1e-4, 1e-1], "log": True, "grid_points": 3},
            "model.dropout": {"float": [0.0, 0.3], "grid_points": 2}}},
    }


DATASETS = {"digits": digits_payload, "diabetes": diabetes_payload}


def strategy_tune(payload: dict[str, Any], strategy: str, trials: int, seed: int) -> dict[str, Any]:
    # Each strategy draws from its own stream (TPE's first trials are random draws: with one shared seed they
    # would be random search's own first trials, and the two results would not be independent).
    tune = {**payload["tune"], "trials": trials, "seed": 1000 * STRATEGIES.index(strategy) + seed,
            "study_name": f"{strategy}-seed{seed}"}
    if strategy == "tpe_pruned":  # four trials finish before any is pruned; then a trial can stop at its first validation
        tune.update({"sampler": "tpe", "pruner": "median", "pruner_startup_trials": 4, "pruner_warmup_epochs": 0})
    else:
        tune.update({"sampler": strategy, "pruner": "none"})
    return tune


def run_strategy(payload: dict[str, Any], cache: Path, root: Path, strategy: str, trials: int, seed: int) -> dict[str, Any]:
    """One study; its trials in order with value and CPU-seconds, and its best value."""
    from trainflow.config.tuning import objective_directions
    from trainflow.experiments.study_results import study_results
    from trainflow.experiments.trial_worker import StudyRequest, load_study, run_worker

    config: RunConfig = parse_section(RunConfig, {**payload, "tune": strategy_tune(payload, strategy, trials, seed)},
                                      f"the bench's {strategy} config")
    assert config.tune is not None
    request = StudyRequest(config=section_payload(config), cache_dir=str(cache), study_dir=str(root / strategy / f"seed{seed}"),
                           study_name=config.tune.study_name or strategy, seed=config.tune.seed or 0)
    Path(request.study_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(request.study_dir) / "trials.log", "w", encoding="utf-8") as lines, \
            contextlib.redirect_stdout(lines), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna warnings (experimental features) would cut into the bench lines
        run_worker(request)
    study, _ = load_study(request)
    (metric, direction), = objective_directions(config.tune, config.train.early_stopping.monitor)
    results = study_results(study, [(metric, direction)])
    rows = sorted(results["trials"], key=lambda r: r["number"])
    return {"metric": metric, "direction": direction, "best": results.get("best", {}).get("values", {}).get(metric),
            "cpu_seconds": results["cpu_seconds"], "pruned_share": results["pruned_share"], "trials": len(rows),
            "history": [(r.get("cpu_seconds", 0.0), r["values"].get(metric)) for r in rows]}


def reaches(value: float | None, target: float, direction: str) -> bool:
    return value is not None and (value <= target if direction == "minimize" else value >= target)


def compute_ratio(tpe: dict[str, Any], random: dict[str, Any]) -> float | None:
    """TPE's CPU-seconds until its best first reaches random's best, over random's total; None: never reached."""
    if random["best"] is None or not random["cpu_seconds"]:
        return None
    spent = 0.0
    for cpu, value in tpe["history"]:
        spent += cpu
        if reaches(value, random["best"], random["direction"]):
            return spent / random["cpu_seconds"]
    return None


def prepare(payload: dict[str, Any], root: Path) -> Path:
    from trainflow.experiments.tuning_run import prepare_data

    config = parse_section(RunConfig, {**payload, "tune": {**payload["tune"], "trials": 1}}, "the bench config")
    _, cache = prepare_data(config, root / "data")
    return cache


def bench_dataset(name: str, trials: int, tpe_trials: int, seeds: list[int], smoke: bool, root: Path, log,
                  save) -> dict[str, Any]:
    payload = DATASETS[name](smoke)
    cache = prepare(payload, root / name)
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for strategy in STRATEGIES:
            budget = tpe_trials if strategy == "tpe_pruned" else trials
            row[strategy] = run_strategy(payload, cache, root / name, strategy, budget, seed)
            outcome = row[strategy]
            log(f"bench-tune {name} seed {seed} {strategy}: best {outcome['metric']} {outcome['best']}, "
                f"{outcome['cpu_seconds']:.1f} CPU-s, pruned {outcome['pruned_share']}, {outcome['trials']} trials")
        row["compute_ratio"] = compute_ratio(row["tpe_pruned"], row["random"])
        log(f"bench-tune {name} seed {seed}: compute_ratio {_ratio(row['compute_ratio'])}")
        rows.append(row)
        save({"dataset": name, "seeds": rows, "partial": True})
    return {"dataset": name, "metric": rows[0]["random"]["metric"], "direction": rows[0]["random"]["direction"],
            "seeds": rows, "summary": summarise(rows)}


def _ratio(value: float | None) -> str:
    return "not_reached" if value is None else f"{value:.2f}"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over seeds (a never-reached ratio counts as infinitely large) and how many seeds met the target."""
    out: dict[str, Any] = {}
    for strategy in STRATEGIES:
        bests = [r[strategy]["best"] for r in rows if r[strategy]["best"] is not None]
        out[strategy] = {"best_median": statistics.median(bests) if bests else None,
                         "cpu_seconds_median": statistics.median(r[strategy]["cpu_seconds"] for r in rows),
                         "pruned_share_median": statistics.median(r[strategy]["pruned_share"] or 0.0 for r in rows)}
    ratios = [r["compute_ratio"] if r["compute_ratio"] is not None else math.inf for r in rows]
    median = statistics.median(ratios)
    out["compute_ratio_median"] = None if math.isinf(median) else median
    out["seeds_within_target"] = sum(1 for r in ratios if r <= 0.6)
    out["seeds"] = len(rows)
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n| dataset | strategy | best (median over seeds) | CPU-s (median) | pruned share |")
    print("|---|---|---|---|---|")
    for result in results:
        for strategy in STRATEGIES:
            s = result["summary"][strategy]
            best = "-" if s["best_median"] is None else f"{s['best_median']:.4g}"
            print(f"| {result['dataset']} ({result['metric']}) | {strategy} | {best} | {s['cpu_seconds_median']:.1f} | "
                  f"{s['pruned_share_median']:.2f} |")
    for result in results:
        s = result["summary"]
        print(f"{result['dataset']}: compute_ratio median {_ratio(s['compute_ratio_median'])}; "
              f"{s['seeds_within_target']} of {s['seeds']} seeds within 0.6")


def last_line(results: list[dict[str, Any]]) -> str:
    def values(key: str) -> str:
        return ",".join(f"{r['dataset']}:{'-' if r['summary'][key]['best_median'] is None else format(r['summary'][key]['best_median'], '.4g')}"
                        for r in results)
    ratios = ",".join(f"{r['dataset']}:{_ratio(r['summary']['compute_ratio_median'])}" for r in results)
    return f"bench-tune: tpe_pruned_best={values('tpe_pruned')} random_best={values('random')} compute_ratio={ratios}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="trials per strategy (default 24; the grid has 24 points)")
    parser.add_argument("--tpe-trials", type=int, help=(
        "TPE+pruning's own trial budget (default: --trials). Pruned trials cost little, so a larger budget "
        "compares the strategies nearer equal compute; compute_ratio is measured the same way"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds (default 0..4)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["digits", "diabetes"])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 4 trials, one seed: checks the bench runs")
    parser.add_argument("--workdir", help="keep the studies here (default: a temporary folder, deleted)")
    parser.add_argument("--json", help="write every seed's numbers here as JSON")
    args = parser.parse_args(argv)
    args.tpe_trials = args.trials if args.tpe_trials is None else args.tpe_trials
    if args.smoke:
        args.trials, args.tpe_trials, args.seeds = min(args.trials, 4), min(args.tpe_trials, 4), args.seeds[:1]
    if args.trials < 1 or args.tpe_trials < 1:
        parser.error("--trials and --tpe-trials must be at least 1")
    torch.set_num_threads(1)  # CPU-seconds comparable across strategies on a shared machine

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
        root = Path(args.workdir or scratch)
        results: list[dict[str, Any]] = []

        def save(partial: dict[str, Any] | None = None) -> None:  # after every seed, so a stopped run leaves its numbers
            if args.json:
                Path(args.json).write_text(json.dumps(results + ([partial] if partial else []), indent=1) + "\n",
                                           encoding="utf-8")

        for name in args.datasets:
            results.append(bench_dataset(name, args.trials, args.tpe_trials, args.seeds, args.smoke, root, log, save))
        save()
    print_table(results)
    budgets = f"{args.trials} trials per strategy" if args.tpe_trials == args.trials else \
        f"{args.tpe_trials} trials for tpe_pruned, {args.trials} for random and grid"
    print(f"({time.monotonic() - started:.0f} s wall, {budgets}, seeds {args.seeds})")
    print(last_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
