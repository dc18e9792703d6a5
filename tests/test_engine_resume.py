"""Exact resume: a run killed with SIGKILL mid-epoch and resumed matches an uninterrupted run bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainflow.training.training_log import read_step_log

DRIVER = Path(__file__).parent / "engine_driver.py"
CONFIG = {
    "max_epochs": 4, "batch_size": 4, "gradient_accumulation": 2, "device": "cpu", "deterministic": True,
    "optimizer": {"name": "adamw", "learning_rate": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 3},
    "checkpoints": {"every_n_steps": 2, "keep_top_k": 2, "total_limit": 4},
    "validation": {"every_n_steps": 5, "every_epoch": True},
    "ema": {"decay": 0.9},
    "early_stopping": {"monitor": "val_loss", "patience": 50},
    "logging": {"tensorboard": False},
}


def run_driver(checkpoint_dir: Path, *extra: str, config: dict = CONFIG, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), str(checkpoint_dir), json.dumps(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def losses(checkpoint_dir: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_step_log(checkpoint_dir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[tuple[int, float]]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    process = run_driver(folder)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return losses(folder)


def test_sigkill_mid_epoch_then_resume_gives_the_same_per_step_losses(tmp_path, uninterrupted):
    steps_per_epoch = 120 // 8
    kill_after = random.Random(os.getpid()).randint(steps_per_epoch + 3, 2 * steps_per_epoch - 2)  # inside epoch 2
    process = run_driver(tmp_path, "--sleep-per-step", "0.05")
    deadline = time.time() + 240
    while time.time() < deadline and len(read_step_log(tmp_path)) < kill_after:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = len(read_step_log(tmp_path))
    assert steps_per_epoch < killed_at < len(uninterrupted), "the kill must land mid-run"

    resumed = run_driver(tmp_path, "--outcome", str(tmp_path / "outcome.json"))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming from checkpoint step-" in output
    resumed_from = json.loads((tmp_path / "outcome.json").read_text())["resumed_from"]
    assert int(resumed_from.removeprefix("step-")) % CONFIG["checkpoints"]["every_n_steps"] == 0
    assert losses(tmp_path) == uninterrupted  # bitwise: floats compared exactly


def test_a_changed_config_refuses_to_resume_and_names_the_field(tmp_path, uninterrupted):
    first = run_driver(tmp_path)
    assert first.wait(timeout=300) == 0
    changed = {**CONFIG, "optimizer": {**CONFIG["optimizer"], "learning_rate": 0.02}}
    second = run_driver(tmp_path, config=changed)
    output, _ = second.communicate(timeout=300)
    assert second.returncode != 0
    assert "train.optimizer.learning_rate is 0.01 in the checkpoint, 0.02 now" in output
    assert "To start fresh, delete" in output
