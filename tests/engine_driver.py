"""Run the engine on a test task in its own process (for kill-and-resume and torchrun tests).

    python engine_driver.py CHECKPOINT_DIR '<train config JSON>' [options]

The config may be a JSON list: then each config runs in turn (in the same
process, so one torchrun start serves several runs) into CHECKPOINT_DIR/run-<i>.
Options:
    --sleep-per-step S           slow each training step down (to land a kill mid-run)
    --outcome PATH               rank 0 writes the outcome's facts here as JSON
    --task-options JSON          keyword arguments for WineTask (fault knobs)
    --rank-facts DIR             every rank writes DIR/rank<r>.json (what its task saw) and
                                 DIR/rank<r>.safetensors (its final weights)
    --separate-dirs-for-other-ranks   rank r > 0 gets CHECKPOINT_DIR-rank<r> (to show it writes nothing)
    --kill-during-checkpoint N   SIGKILL this process right after the first file of the N-th checkpoint
    --pid-dir DIR                every rank writes its process id to DIR/rank<r>.pid before training
                                 (to send one rank a signal); a rank stopped by SIGTERM writes
                                 DIR/rank<r>-preempted.json with the step it stopped after
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.training import checkpoints  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.preemption import TrainingPreempted  # noqa: E402
from trainflow.training.run_identity import RunIdentity, trainable_state  # noqa: E402


def kill_during_checkpoint(number: int) -> None:
    """Make the `number`-th checkpoint write die after its first file, as a node loss would."""
    original_save, original_write = checkpoints.CheckpointStore.save, checkpoints.save_file
    started = [0]

    def counting_save(self, *args, **kwargs):
        started[0] += 1
        return original_save(self, *args, **kwargs)

    def dying_write(tensors, filename, *args, **kwargs):
        original_write(tensors, filename, *args, **kwargs)
        if started[0] == number:
            print(f"driver: killed while writing checkpoint {number} ({Path(filename).name} written)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.CheckpointStore.save = counting_save
    checkpoints.save_file = dying_write


def train_once(checkpoint_dir: Path, config: dict, args: argparse.Namespace, outcome_path: str | None) -> None:
    cfg = TrainConfig.model_validate(config)
    task = WineTask(**json.loads(args.task_options))
    if args.sleep_per_step:
        step = task.training_step

        def slow_step(model, batch):
            time.sleep(args.sleep_per_step)
            return step(model, batch)

        task.training_step = slow_step
    rank = int(os.environ.get("RANK", "0"))
    if args.separate_dirs_for_other_ranks and rank > 0:
        checkpoint_dir = Path(f"{checkpoint_dir}-rank{rank}")
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    trainer = Trainer(task, cfg, checkpoint_dir, 0, identity)
    if args.pid_dir:
        Path(args.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))
    try:
        outcome = trainer.fit()
    except TrainingPreempted as stop:
        if args.pid_dir:
            (Path(args.pid_dir) / f"rank{rank}-preempted.json").write_text(json.dumps({"step": stop.step}))
        raise
    if args.rank_facts:
        from safetensors.torch import save_file

        folder = Path(args.rank_facts)
        folder.mkdir(parents=True, exist_ok=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(folder / f"rank{rank}.safetensors"))
        (folder / f"rank{rank}.json").write_text(json.dumps({
            "rank": trainer.info.rank, "world_size": trainer.info.world_size, "calls": task.calls,
            "validation_counts": task.validation_counts, "checkpoint_dir": str(checkpoint_dir),
            "master_port": os.environ.get("MASTER_PORT"),
        }))
    if outcome_path and trainer.info.is_main:
        Path(outcome_path).write_text(json.dumps({
            "stop_reason": outcome.stop_reason, "stop_kind": outcome.stop_kind, "best_step": outcome.best_step,
            "best_value": outcome.best_value, "steps_run": outcome.steps_run, "world_size": outcome.world_size,
            "micro_batch": outcome.micro_batch, "gradient_accumulation": outcome.gradient_accumulation,
            "effective_batch": outcome.effective_batch, "history": outcome.history, "resumed_from": outcome.resumed_from,
        }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("config")
    parser.add_argument("--sleep-per-step", type=float, default=0.0)
    parser.add_argument("--outcome", help="write the outcome's facts here as JSON")
    parser.add_argument("--task-options", default="{}")
    parser.add_argument("--rank-facts")
    parser.add_argument("--separate-dirs-for-other-ranks", action="store_true")
    parser.add_argument("--kill-during-checkpoint", type=int)
    parser.add_argument("--pid-dir")
    args = parser.parse_args()
    if args.kill_during_checkpoint:
        kill_during_checkpoint(args.kill_during_checkpoint)
    configs = json.loads(args.config)
    if isinstance(configs, dict):
        train_once(Path(args.checkpoint_dir), configs, args, args.outcome)
        return
    for index, config in enumerate(configs):
        folder = Path(args.checkpoint_dir) / f"run-{index}"
        train_once(folder, config, args, str(folder / "outcome.json"))


if __name__ == "__main__":
    main()
