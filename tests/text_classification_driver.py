"""Train a text classifier from a train request in its own process, each step slowed (to land a SIGKILL mid-run).

    python text_classification_driver.py REQUEST_JSON SLEEP_PER_STEP
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from trainflow.config import ModelConfig, TrainConfig
from trainflow.tasks import get_task
from trainflow.training.run_training import TrainRequest, train_and_export


def main() -> None:
    request = TrainRequest.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    pause = float(sys.argv[2])
    cfg, model_cfg = TrainConfig.model_validate(request.train_config), ModelConfig.model_validate(request.model_config_section)
    task = get_task(request.task).training_task(Path(request.cache_dir), model_cfg, cfg, request.seed)
    step = task.training_step

    def slow_step(model, batch):
        time.sleep(pause)
        return step(model, batch)

    task.training_step = slow_step
    train_and_export(task, request, cfg, model_cfg)


if __name__ == "__main__":
    main()
