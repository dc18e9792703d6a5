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

sys.path.insert(0, str(Path(__file__).parent))

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


def kill_mid_epoch_and_resume(folder: Path, complete: list[tuple[int, float]], steps_per_epoch: int, *extra: str) -> str:
    """SIGKILL a run inside its second epoch, resume it, and return the resumed run's output."""
    kill_after = random.Random(os.getpid()).randint(steps_per_epoch + 3, 2 * steps_per_epoch - 2)
    process = run_driver(folder, "--sleep-per-step", "0.05", *extra)
    deadline = time.time() + 240
    while time.time() < deadline and len(read_step_log(folder)) < kill_after:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = len(read_step_log(folder))
    assert steps_per_epoch < killed_at < len(complete), "the kill must land mid-run"
    resumed = run_driver(folder, *extra)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    return output


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
    output = kill_mid_epoch_and_resume(tmp_path, uninterrupted, steps_per_epoch, "--outcome", str(tmp_path / "outcome.json"))
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


@pytest.mark.slow
def test_bucketed_batches_resume_bit_for_bit_after_sigkill(tmp_path):
    """Records in buckets (here the wine class): every step from one bucket, and a killed run resumes exactly."""
    from trainflow.training.bucketed_batches import bucketed_steps_per_epoch
    from engine_tasks import WineTask

    options = ("--task-options", json.dumps({"buckets_by_label": True}))
    complete = run_driver(tmp_path / "complete", *options)
    output, _ = complete.communicate(timeout=300)
    assert complete.returncode == 0, output
    uninterrupted = losses(tmp_path / "complete")
    steps_per_epoch = bucketed_steps_per_epoch(WineTask(buckets_by_label=True).train.bucket_ids, 8, 1)
    assert len(uninterrupted) == 4 * steps_per_epoch
    output = kill_mid_epoch_and_resume(tmp_path / "killed", uninterrupted, steps_per_epoch, *options)
    assert "resuming from checkpoint step-" in output
    assert losses(tmp_path / "killed") == uninterrupted  # bitwise: floats compared exactly
