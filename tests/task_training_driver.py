"""Train a registered task from a train request in its own process (kill-and-resume and torchrun tests of tasks).

    python task_training_driver.py REQUEST_JSON [--kill-after-step N]

REQUEST_JSON is a trainflow.training.run_training.TrainRequest as a file; the run goes through
trainflow.stages.train.train_from_request, as the train stage and `trainflow train-worker` run it.
--kill-after-step N: SIGKILL this process right after optimizer step N is logged (and checkpointed, if
step N is a checkpoint step), as a node loss would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from trainflow.stages.train import train_from_request
from trainflow.training.engine import Trainer
from trainflow.training.run_training import TrainRequest


def kill_after_step(number: int) -> None:
    original = Trainer._after_step

    def after_step(self, record):
        original(self, record)
        if self.step == number:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer._after_step = after_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("request")
    parser.add_argument("--kill-after-step", type=int)
    args = parser.parse_args()
    if args.kill_after_step:
        kill_after_step(args.kill_after_step)
    train_from_request(TrainRequest.model_validate(json.loads(Path(args.request).read_text())))


if __name__ == "__main__":
    main()
