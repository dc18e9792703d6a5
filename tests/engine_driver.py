"""Run the engine on a test task in its own process (for kill-and-resume and torchrun tests).

    python engine_driver.py CHECKPOINT_DIR '<train config JSON>' [--sleep-per-step S] [--export DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine_tasks import WineTask  # noqa: E402
from trainflow.config import TrainConfig  # noqa: E402
from trainflow.training.engine import Trainer  # noqa: E402
from trainflow.training.run_identity import RunIdentity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("config")
    parser.add_argument("--sleep-per-step", type=float, default=0.0)
    parser.add_argument("--outcome", help="write the outcome's facts here as JSON")
    args = parser.parse_args()
    cfg = TrainConfig.model_validate(json.loads(args.config))
    task = WineTask()
    if args.sleep_per_step:
        step = task.training_step

        def slow_step(model, batch):
            time.sleep(args.sleep_per_step)
            return step(model, batch)

        task.training_step = slow_step
    identity = RunIdentity.build("classification", 0, {}, cfg.model_dump(mode="json"), "wine")
    trainer = Trainer(task, cfg, Path(args.checkpoint_dir), 0, identity)
    outcome = trainer.fit()
    if args.outcome and trainer.info.is_main:
        Path(args.outcome).write_text(json.dumps({
            "stop_reason": outcome.stop_reason, "best_step": outcome.best_step, "steps_run": outcome.steps_run,
            "world_size": outcome.world_size, "effective_batch": outcome.effective_batch, "history": outcome.history,
            "resumed_from": outcome.resumed_from,
        }))


if __name__ == "__main__":
    main()
