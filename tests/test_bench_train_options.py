"""bench_train.py --compare-options --smoke: every speed/EMA option trains through the engine and gets a row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compare_options_smoke_prints_a_row_and_a_ratio_per_option(tiny_base_model):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--compare-options", "--smoke",
                           "--base", str(tiny_base_model)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    for option in ("default", "tf32", "fused_optimizer", "channels_last", "adamw_8bit", "ema", "ema_every_10_on_cpu"):
        assert option in rows
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("bench-train options: default=1.00 tf32=")


def test_a_base_that_is_no_pipeline_is_one_sentence(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--compare-options", "--smoke",
                           "--base", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "shared")})
    assert done.returncode == 2
    assert "--base" in done.stderr and "model_index.json" in done.stderr
