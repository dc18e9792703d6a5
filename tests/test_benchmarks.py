"""Every `make bench-*` still runs: each benchmark's --smoke mode (tiny sizes, a few steps) as `make` would run it.

A refactor that moves something a benchmark imports fails here instead of the next time someone benchmarks.
The numbers a smoke run prints mean nothing; the test asserts the exit code and the final summary line.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, summary", [
    ("bench_data.py", r"bench-data: cache/naive=\d+\.\d cache/raw=\d+\.\d\d streaming_rss_2x/1x=\d+\.\d\d"),
    ("bench_train.py", r"bench-train: ours/floor=\d+\.\d\d ours/per-step-encode=\d+\.\d\d"),
    ("bench_eval.py", r"bench-eval: fid_rel_diff=\d\.\d\de[-+]\d\d ours/pytorch_fid_time=\d+\.\d\d"),
], ids=["bench-data", "bench-train", "bench-eval"])
def test_each_benchmark_runs_in_smoke_mode_and_prints_its_summary(tmp_path, script, summary):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT)]), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], capture_output=True,
                            text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(summary, last), last
