"""Exact resume: a run killed with SIGKILL, or stopped by SIGTERM (preemption), mid-epoch and resumed matches an
uninterrupted run bit for bit."""

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

sys.path.insert(0, str(Path(__file__).parent))

from trainflow.training.training_log import read_step_log  # noqa: E402

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


# ---------------------------------------------------------------- preemption (SIGTERM)
@pytest.mark.slow  # two driver processes with slowed steps: ~60 s on a loaded 2-core machine
def test_sigterm_mid_epoch_checkpoints_the_step_it_finished_exits_143_and_the_resumed_run_is_the_same(tmp_path, uninterrupted):
    steps_per_epoch = 120 // 8
    # Signal right after an even step's log line (its checkpoint is written), so the stop lands, in all
    # likelihood, one step later, on a step that no periodic checkpoint covers.
    signal_after = 2 * random.Random(os.getpid() + 1).randint((steps_per_epoch + 3) // 2, (2 * steps_per_epoch - 3) // 2)
    process = run_driver(tmp_path, "--sleep-per-step", "0.05")
    deadline = time.time() + 240
    while time.time() < deadline and len(read_step_log(tmp_path)) < signal_after:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output  # 128 + SIGTERM: retriable (trainflow.stages.runner)
    stopped = read_step_log(tmp_path)[-1]["step"]
    assert signal_after <= stopped < len(uninterrupted), "the stop must land mid-run"
    assert "train: SIGTERM received (rank 0); stopping after this optimizer step" in output
    assert (f"train: stopped on SIGTERM after step {stopped}; checkpoint step-{stopped:09d} written, so a retry "
            "resumes there (exit code 143)") in output
    assert "Traceback" not in output
    assert max(p.name for p in tmp_path.glob("step-*")) == f"step-{stopped:09d}"

    resumed = run_driver(tmp_path, "--outcome", str(tmp_path / "outcome.json"))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert json.loads((tmp_path / "outcome.json").read_text())["resumed_from"] == f"step-{stopped:09d}"
    assert losses(tmp_path) == uninterrupted  # bitwise: no step lost, none repeated


def sigterm_at_calls(task, *calls: int):
    """Make the task's training_step send this process SIGTERM at the given calls (1-based): mid-step."""
    step = task.training_step

    def signalling_step(model, batch):
        if len(task.calls) + 1 in calls:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(model, batch)

    task.training_step = signalling_step
    return task


def in_process(folder: Path, task, **changes):
    from trainflow.config import TrainConfig
    from trainflow.training.engine import Trainer
    from trainflow.training.run_identity import RunIdentity

    cfg = TrainConfig.model_validate({**CONFIG, "max_epochs": 1, **changes})
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    return Trainer(task, cfg, folder, 0, identity)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> list[tuple[int, float]]:
    from engine_tasks import WineTask

    folder = tmp_path_factory.mktemp("one-epoch")
    in_process(folder, WineTask()).fit()
    return losses(folder)


def test_sigterm_mid_step_finishes_that_step_writes_its_checkpoint_and_resume_is_exact(tmp_path, capsys, one_epoch):
    from engine_tasks import WineTask
    from trainflow.training.preemption import TrainingPreempted

    previous_handler = signal.getsignal(signal.SIGTERM)
    # Accumulation 2: call 13 is the first micro-batch of step 7, which no periodic checkpoint (every 2) covers.
    trainer = in_process(tmp_path, sigterm_at_calls(WineTask(), 13))
    with pytest.raises(TrainingPreempted) as stopped:
        trainer.fit()
    assert stopped.value.code == 143 and stopped.value.step == 7
    assert signal.getsignal(signal.SIGTERM) is previous_handler, "the engine's handler must not outlive fit()"
    assert [step for step, _ in losses(tmp_path)] == list(range(1, 8))  # step 7 finished, step 8 never started
    assert max(p.name for p in tmp_path.glob("step-*")) == "step-000000007"
    assert "checkpoint step-000000007 written" in capsys.readouterr().out

    outcome = in_process(tmp_path, WineTask()).fit()
    assert outcome.resumed_from == "step-000000007" and outcome.steps_run == 15
    assert losses(tmp_path) == one_epoch


def test_sigterm_with_no_time_left_in_the_grace_budget_skips_the_checkpoint_and_resume_is_still_exact(tmp_path, capsys, one_epoch):
    from engine_tasks import WineTask
    from trainflow.training.preemption import TrainingPreempted

    trainer = in_process(tmp_path, sigterm_at_calls(WineTask(), 13), preemption={"grace_seconds": 1e-6})
    with pytest.raises(TrainingPreempted):
        trainer.fit()
    line = next(line for line in capsys.readouterr().out.splitlines() if "stopped on SIGTERM" in line)
    assert line.startswith("train: stopped on SIGTERM after step 7 without a new checkpoint (")
    assert "of the 1e-06 s grace budget gone, the last write took " in line
    assert line.endswith("a retry resumes from the previous one (exit code 143)")
    assert max(p.name for p in tmp_path.glob("step-*")) == "step-000000006"

    outcome = in_process(tmp_path, WineTask()).fit()
    assert outcome.resumed_from == "step-000000006"
    assert losses(tmp_path) == one_epoch  # step 7 is run again, exactly as before


def test_a_second_sigterm_stops_at_once(tmp_path):
    from engine_tasks import WineTask
    from trainflow.training.preemption import TrainingPreempted

    trainer = in_process(tmp_path, sigterm_at_calls(WineTask(), 13, 14))
    with pytest.raises(SystemExit) as stopped:
        trainer.fit()
    assert stopped.value.code == 143 and not isinstance(stopped.value, TrainingPreempted)
    assert [step for step, _ in losses(tmp_path)] == list(range(1, 7))  # step 7 abandoned
    assert max(p.name for p in tmp_path.glob("step-*")) == "step-000000006"


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
