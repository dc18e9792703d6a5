"""One Katib trial (the container `trainflow compile --katib` renders): train with the sampled values, print the objective.

    python -m trainflow.experiments.katib_trial --root DIR --trial NAME --config-json JSON \\
        --param train.optimizer.learning_rate=log10:-2.7 --param train.batch_size=64 ...

The split and cache are made once under <root>/data by whichever trial comes first (the others wait on an
O_EXCL lock file, Optuna's, which works on NFS-like volumes) and read by every trial; the trial trains in
<root>/trials/<NAME>/ (a retried pod resumes from its checkpoints) on the train and val splits only.
Katib's StdOut metrics collector reads `<metric>=<value>` lines: one per validation while training (what its
median-stop compares), and last the value at the best checkpoint, the trial's score. Everything else the
engine prints goes to <root>/trials/<NAME>/train.log, so nothing else on stdout looks like a metric.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from trainflow.config import RunConfig, parse_section, section_payload
from trainflow.config.tuning import ParamRange, apply_params, objective_directions
from trainflow.errors import ConfigError, UserFacingError

TRIAL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DATA_LOCK_GRACE_SECONDS = 3600  # a pod killed while preparing the data frees the lock after this long


def sampled_value(path: str, spec: ParamRange, raw: str) -> Any:
    """Katib's string for one parameter as the config value; ConfigError naming the parameter when it does not fit."""
    problem = f"--param {path}={raw}"
    try:
        if raw.startswith("log10:"):
            if not (spec.kind == "float" and spec.log):
                raise ConfigError(f"{problem}: only a float log range is searched as log10")
            value: Any = 10 ** float(raw.removeprefix("log10:"))
        elif spec.kind == "float":
            value = float(raw)
        elif spec.kind == "int":
            number = float(raw)
            if not number.is_integer():
                raise ConfigError(f"{problem}: the field takes whole numbers")
            value = int(number)
        else:
            choices = {(v if isinstance(v, str) else json.dumps(v)): v for v in spec.categorical or []}
            if raw not in choices:
                raise ConfigError(f"{problem}: not one of the categorical values {sorted(choices)}")
            return choices[raw]
    except ValueError:
        raise ConfigError(f"{problem}: not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{problem}: not a finite number")
    low, high = spec.float_range or spec.int_range  # type: ignore[misc]
    slack = 1e-9 * max(abs(low), abs(high))  # 10**log10(x) rounds
    if not low - slack <= value <= high + slack:
        raise ConfigError(f"{problem}: outside the searched range [{low:g}, {high:g}]; the Experiment and the "
                          "config differ: render it again with trainflow compile --katib")
    return min(max(value, low), high)


def trial_config(payload: dict[str, Any], assignments: list[str]) -> tuple[RunConfig, dict[str, Any]]:
    """The run config with every --param applied (each tune.params path exactly once), validated again."""
    config: RunConfig = parse_section(RunConfig, payload, "--config-json")
    if config.tune is None:
        raise ConfigError("--config-json: the config has no tune section; render the Experiment with trainflow compile --katib")
    params: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or path not in config.tune.params:
            raise ConfigError(f"--param {assignment}: give path=value with a path of tune.params "
                              f"({', '.join(config.tune.params)})")
        if path in params:
            raise ConfigError(f"--param {path}: given twice")
        params[path] = sampled_value(path, config.tune.params[path], raw)
    missing = [path for path in config.tune.params if path not in params]
    if missing:
        raise ConfigError(f"--param {missing[0]}: no value given; the trial needs one for every tune.params path")
    trial: RunConfig = parse_section(RunConfig, apply_params(section_payload(config), params), "the trial's configuration")
    return trial, params


def _prepared_cache(config: RunConfig, root: Path) -> Path:
    from optuna.storages.journal import JournalFileOpenLock

    from trainflow.experiments.tuning_run import prepare_data

    root.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(root / "data"), grace_period=DATA_LOCK_GRACE_SECONDS)
    lock.acquire()
    try:
        _, cache = prepare_data(config, root / "data")
    finally:
        lock.release()
    return cache


def run_trial(config: RunConfig, root: Path, name: str, out=None) -> dict[str, float]:
    """Train the trial and print its metric lines to `out` (stdout); returns the values at the best checkpoint."""
    from trainflow.experiments.trial_worker import trial_output
    from trainflow.stages.train import TRAINING_RECORD, TrainRequest, train_from_request

    out = out or sys.stdout
    assert config.tune is not None
    metric, _ = objective_directions(config.tune, config.train.early_stopping.monitor)[0]
    cache = _prepared_cache(config, root)
    folder = root / "trials" / name
    request = TrainRequest.model_validate({
        "task": config.task, "cache_dir": str(cache), "seed": config.seed,
        "model_config": section_payload(config.model), "train_config": section_payload(config.train),
        "checkpoint_dir": str(folder / "checkpoints"), "output_dir": str(folder / "model")})

    def report(step: int, epoch: float, metrics: dict[str, float]) -> None:
        if math.isfinite(metrics.get(metric, math.nan)):
            print(f"{metric}={metrics[metric]:.10g}", file=out, flush=True)

    with trial_output(folder / "train.log", verbose=False):
        summary = train_from_request(request, validation_hook=report)
    record = json.loads((folder / "model" / TRAINING_RECORD).read_text(encoding="utf-8"))
    best = next((h for h in record["history"] if h["step"] == summary["best_step"]), {})
    if not math.isfinite(best.get(metric, math.nan)):
        raise UserFacingError(f"trial {name}: no finite {metric} at the best checkpoint (step {summary['best_step']}); "
                              f"see {folder / 'train.log'}")
    print(f"{metric}={best[metric]:.10g}", file=out, flush=True)
    return {metric: float(best[metric])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainflow.experiments.katib_trial",
                                     description="One Katib trial: train with the sampled values, print <metric>=<value>.")
    parser.add_argument("--root", required=True, help="the study's folder on the workspace (data/, trials/)")
    parser.add_argument("--trial", required=True, help="the trial's name (Katib's ${trialSpec.Name})")
    parser.add_argument("--config-json", required=True, help="the run config as JSON (with its tune section)")
    parser.add_argument("--param", action="append", default=[], metavar="PATH=VALUE",
                        help="a sampled value; log10:X for a log range searched as its logarithm")
    args = parser.parse_args(argv)
    try:
        if not TRIAL_NAME.fullmatch(args.trial):
            raise ConfigError(f"--trial {args.trial!r}: not a Katib trial name (lower-case letters, digits, '-', '.')")
        try:
            payload = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc.msg} at character {exc.pos})") from None
        config, params = trial_config(payload, args.param)
        # No '=' here: Katib's collector reads name=value lines from the container's output.
        print(f"katib trial {args.trial}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in params.items()), file=sys.stderr, flush=True)
        run_trial(config, Path(args.root), args.trial)
    except UserFacingError as exc:
        print(f"trainflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
