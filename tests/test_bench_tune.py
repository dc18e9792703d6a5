"""make bench-tune: the smoke run prints its last line, and compute_ratio counts TPE's CPU until it reaches random's best."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_tune", REPO / "benchmarks" / "bench_tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(history, direction="maximize"):
    return {"history": history, "cpu_seconds": sum(c for c, _ in history), "direction": direction,
            "best": (max if direction == "maximize" else min)(v for _, v in history if v is not None)}


def test_compute_ratio_is_tpe_cpu_until_it_first_reaches_random_best_over_random_total():
    bench = bench_module()
    random = outcome([(4.0, 0.90), (4.0, 0.95), (2.0, 0.93)])  # best 0.95, 10 CPU-s in all
    tpe = outcome([(1.0, 0.80), (0.5, None), (2.0, 0.96), (9.0, 0.97)])  # a pruned trial has no value
    assert bench.compute_ratio(tpe, random) == pytest.approx(3.5 / 10)
    assert bench.compute_ratio(outcome([(1.0, 0.94)]), random) is None  # never reached
    lower = outcome([(5.0, 3000.0), (5.0, 2900.0)], "minimize")
    assert bench.compute_ratio(outcome([(1.0, 2950.0), (2.0, 2899.0)], "minimize"), lower) == pytest.approx(0.3)
    summary = bench.summarise([{s: {"best": 1.0, "cpu_seconds": 1.0, "pruned_share": 0.0} for s in bench.STRATEGIES}
                               | {"compute_ratio": r} for r in (0.2, None, 0.5)])
    assert summary["compute_ratio_median"] == 0.5 and summary["seeds_within_target"] == 2


@pytest.mark.slow
def test_the_smoke_bench_runs_every_strategy_on_both_datasets_and_ends_with_its_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_tune.py"), "--smoke", "--tpe-trials", "3", "--json",
                           str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    number = r"(-?[0-9.e+-]+|-)"
    assert re.fullmatch(rf"bench-tune: tpe_pruned_best=digits:{number},diabetes:{number} "
                        rf"random_best=digits:{number},diabetes:{number} "
                        r"compute_ratio=digits:([0-9.]+|not_reached),diabetes:([0-9.]+|not_reached)", last), last
    for strategy in ("tpe_pruned", "random", "grid"):
        assert re.search(rf"\| digits \(val_accuracy\) \| {strategy} \|", done.stdout)
        assert re.search(rf"\| diabetes \(val_mse\) \| {strategy} \|", done.stdout)
    for dataset in json.loads((tmp_path / "bench.json").read_text()):  # --tpe-trials gives TPE+pruning its own budget
        assert [(s["tpe_pruned"]["trials"], s["random"]["trials"], s["grid"]["trials"]) for s in dataset["seeds"]] == [(3, 4, 4)]
