"""What the engine survives: out-of-memory, a NaN loss, a kill during a checkpoint write, a damaged checkpoint.

The faults are injected through the wine test task (tests/engine_tasks.py) or by
killing a driver process; in-process runs take a few seconds each.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.errors import UserFacingError  # noqa: E402
from trainflow.training.checkpoints import CheckpointStore  # noqa: E402
from trainflow.training.engine import Trainer, TrainingOutcome  # noqa: E402
from trainflow.training.run_identity import RunIdentity, trainable_state  # noqa: E402
from trainflow.training.training_log import read_step_log  # noqa: E402

DRIVER = Path(__file__).parent / "engine_driver.py"
BASE = {
    "max_epochs": 2, "batch_size": 8, "device": "cpu", "deterministic": True,
    "optimizer": {"name": "adamw", "learning_rate": 0.01}, "schedule": {"name": "cosine", "warmup_steps": 2},
    "validation": {"every_n_steps": 4, "every_epoch": True},
    "early_stopping": {"monitor": "val_loss", "patience": None},
    "checkpoints": {"every_n_steps": 2, "keep_top_k": 2, "total_limit": 4},
    "logging": {"tensorboard": False},
}


def config(**changes) -> dict:
    return {**json.loads(json.dumps(BASE)), **changes}


def train(folder: Path, task: WineTask, settings: dict) -> tuple[Trainer, TrainingOutcome]:
    cfg = TrainConfig.model_validate(settings)
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    trainer = Trainer(task, cfg, folder, 0, identity)
    return trainer, trainer.fit()


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainable_state(trainer.accelerator.unwrap_model(trainer.model)).items()}


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- out of memory
def test_out_of_memory_halves_the_micro_batch_and_retries_the_same_records_with_the_same_random_numbers(tmp_path, capsys):
    settings = config(max_epochs=1)
    reference_task = WineTask(draw_random=True)
    reference, reference_outcome = train(tmp_path / "reference", reference_task, settings)
    capsys.readouterr()
    # Micro-batches of 8 "run out of memory" from the 6th training step on: mid-epoch, position 40.
    task = WineTask(draw_random=True, fail_when_batch_larger_than=4, oom_after_calls=5)
    trainer, outcome = train(tmp_path / "oom", task, settings)
    printed = capsys.readouterr().out

    assert ("train: out of memory at step 6: micro-batch 8 -> 4, accumulation -> 2 (effective batch unchanged at 8); "
            "retrying") in printed
    assert (outcome.micro_batch, outcome.gradient_accumulation, outcome.effective_batch) == (4, 2, 8)
    assert outcome.steps_run == reference_outcome.steps_run == 15  # 120 records / 8 per step
    events = [call["event"] for call in task.calls]
    assert events.count("oom") == 1 and events.index("oom") == 5
    failed, first_half, second_half = task.calls[5:8]
    assert first_half["indices"] + second_half["indices"] == failed["indices"]  # same records, same order
    assert first_half["random"] == failed["random"]  # the RNG was rewound to where the failed attempt began
    assert failed["indices"] == reference_task.calls[5]["indices"] and failed["random"] == reference_task.calls[5]["random"]
    assert task.batch_sizes_seen[:5] == [8] * 5 and set(task.batch_sizes_seen[6:]) == {4}

    # Same effective batch: the same training, up to float summation order.
    ours, theirs = read_step_log(tmp_path / "oom"), read_step_log(tmp_path / "reference")
    assert [r["step"] for r in ours] == list(range(1, 16))
    assert [r["loss"] for r in ours[:5]] == [r["loss"] for r in theirs[:5]]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in theirs], rel=1e-5)
    expected = final_weights(reference)
    for name, value in final_weights(trainer).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)


def test_out_of_memory_at_a_micro_batch_of_one_gives_one_clear_message(tmp_path, capsys):
    with pytest.raises(UserFacingError) as caught:
        train(tmp_path, WineTask(fail_when_batch_larger_than=0), config())
    message = str(caught.value)
    assert message.startswith("CUDA out of memory with a micro-batch of 1; the model does not fit on this GPU")
    assert "\n" not in message
    printed = capsys.readouterr().out
    for old, new, accumulation in ((8, 4, 2), (4, 2, 4), (2, 1, 8)):
        assert f"micro-batch {old} -> {new}, accumulation -> {accumulation} (effective batch unchanged at 8)" in printed
    assert not list((tmp_path).glob("step-*")), "no checkpoint may be written for a step that never ran"


# ---------------------------------------------------------------- non-finite loss
def test_a_nan_loss_stops_at_once_and_leaves_the_last_good_checkpoint_untouched(tmp_path):
    folder = tmp_path / "run"
    # Step 7 is NaN; the last checkpoint is step 6's (every 2 steps). The task's random draws move the RNG state,
    # so even a rewrite of step 6's checkpoint would change its bytes.
    task = WineTask(nan_loss_at_call=7, draw_random=True)
    seen_at_nan = {}
    step = task.training_step

    def snapshot_then_step(model, batch):
        if len(task.calls) + 1 == task.nan_loss_at_call:
            seen_at_nan.update(file_digests(folder))
        return step(model, batch)

    task.training_step = snapshot_then_step
    trainer, outcome = train(folder, task, config())

    assert outcome.stop_kind == "non_finite" and outcome.steps_run == 6
    assert "training loss became nan at step 7" in outcome.stop_reason
    assert [r["step"] for r in read_step_log(folder)] == [1, 2, 3, 4, 5, 6]
    assert "step-000000006/model.safetensors" in seen_at_nan
    assert file_digests(folder) == seen_at_nan  # no new checkpoint, and every byte of the old ones unchanged
    assert len(task.calls) == 7, "training went on after the NaN"
    newest = CheckpointStore(folder, True, 2, 4).load_newest()
    assert newest.path.name == "step-000000006" and not newest.state["finished"]


def test_a_non_finite_validation_metric_stops_without_checkpointing_the_weights_that_produced_it(tmp_path):
    folder = tmp_path / "run"
    # Checkpoints at 2, 4 (validated), 6; validation 2 (step 8) is NaN. With keep_top_k 1 the store holds step 4
    # (best) and step 6 (newest, last good): a checkpoint at step 8 would be the newest and prune step 6 away.
    task = WineTask(nan_validation_at_call=2, draw_random=True)
    seen_before = {}
    step = task.training_step

    def snapshot_then_step(model, batch):
        if len(task.calls) == 7:  # about to run step 8, whose validation is NaN
            seen_before.update(file_digests(folder))
        return step(model, batch)

    task.training_step = snapshot_then_step
    _, outcome = train(folder, task, config(checkpoints={"every_n_steps": 2, "keep_top_k": 1, "total_limit": 2}))
    assert outcome.stop_kind == "non_finite" and "val_loss became nan at step 8" in outcome.stop_reason
    assert {name.split("/")[0] for name in seen_before if name.startswith("step-")} == {"step-000000004", "step-000000006"}
    seen_after = file_digests(folder)
    seen_after.pop("training_log.jsonl"), seen_before.pop("training_log.jsonl")  # step 8 itself ran and is logged
    assert seen_after == seen_before
    assert outcome.best_step == 4


# ---------------------------------------------------------------- checkpoints
@pytest.mark.slow  # two driver processes: ~45 s on a loaded 2-core machine
def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_the_next_run_resumes_from_it(tmp_path):
    settings = config(max_epochs=1)
    folder = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(DRIVER), str(folder), json.dumps(settings),
                             "--kill-during-checkpoint", "2"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "killed while writing checkpoint 2 (model.safetensors written)" in killed.stdout
    half_written = list(folder.glob(".step-000000004.*"))
    assert len(half_written) == 1 and sorted(p.name for p in half_written[0].iterdir()) == ["model.safetensors"]
    store = CheckpointStore(folder, True, 2, 4)
    assert [r.path.name for r in store.records()] == ["step-000000002"]
    assert store.load_newest().state["step"] == 2  # loads and verifies its checksums

    resumed = subprocess.run([sys.executable, str(DRIVER), str(folder), json.dumps(settings),
                              "--outcome", str(tmp_path / "outcome.json")], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "train: resuming from checkpoint step-000000002 (step 2, epoch 1, 16 records in)" in resumed.stdout
    assert json.loads((tmp_path / "outcome.json").read_text())["steps_run"] == 15
    assert not list(folder.glob(".step-*")), "the staging folder of the killed write is cleaned up"

    reference_folder = tmp_path / "reference"
    train(reference_folder, WineTask(), settings)
    resumed_log, reference_log = read_step_log(folder), read_step_log(reference_folder)
    assert [r["step"] for r in resumed_log] == list(range(1, 16))
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in reference_log], rel=1e-6)


@pytest.mark.parametrize("damaged_file", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_a_truncated_file_in_the_newest_checkpoint_is_detected_and_the_previous_one_is_used(tmp_path, capsys, damaged_file):
    settings = config(max_epochs=1)
    folder = tmp_path / "run"
    train(folder, WineTask(), settings)
    first_log = read_step_log(folder)
    names = [r.path.name for r in CheckpointStore(folder, True, 2, 4).records()]
    assert names[-1] == "step-000000015" and len(names) >= 2
    damaged = folder / names[-1] / damaged_file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    capsys.readouterr()

    _, outcome = train(folder, WineTask(), settings)
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if line.startswith("train: warning: skipping checkpoint"))
    assert warning.startswith(f"train: warning: skipping checkpoint {names[-1]}: ")
    assert warning.endswith("; trying the previous one")
    assert f": {damaged_file} does not match its checksum (truncated, edited or damaged)" in warning  # manifest.json's
    assert outcome.resumed_from == names[-2]
    assert f"train: resuming from checkpoint {names[-2]}" in captured.out
    assert outcome.steps_run == 15
    assert CheckpointStore(folder, True, 2, 4).load_newest().path.name == names[-1]  # rewritten, verifies again
    assert [r["loss"] for r in read_step_log(folder)] == pytest.approx([r["loss"] for r in first_log], rel=1e-6)


@pytest.mark.parametrize(("lower_is_better", "keep_top_k", "total_limit", "kept"), [
    (True, 2, 4, [2, 4, 7]),   # newest (7, no metric) + the two lowest (4: 0.2, 2: 0.3)
    (True, 1, 4, [4, 7]),
    (True, 3, 3, [2, 4, 7]),   # top-3 would add 3 (0.4); the total limit keeps newest + the two best
    (False, 2, 4, [5, 6, 7]),  # max mode: 6 (0.7) and 5 (0.6)
    (True, 2, 2, [4, 7]),      # the limit never drops the best or the newest
])
def test_retention_keeps_the_newest_and_the_top_k_within_the_total_limit(tmp_path, lower_is_better, keep_top_k, total_limit, kept):
    store = CheckpointStore(tmp_path, lower_is_better, keep_top_k, total_limit)
    metrics = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.2, 5: 0.6, 6: 0.7, 7: None}
    for step, metric in metrics.items():
        store.save(step, {"model": {"w": torch.full((2,), float(step))}}, {"note": step}, metric)
        assert store.records()[-1].step == step  # the newest is never pruned
        assert len(store.records()) <= total_limit
    assert [r.step for r in store.records()] == kept
    assert store.best().step == (4 if lower_is_better else 6)
    assert store.load_best().tensors["model"]["w"].tolist() == [store.best().step] * 2
