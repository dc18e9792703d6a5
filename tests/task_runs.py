"""Tiny runs of a registered task for its tests: a digits cache, a train request, the driver in a subprocess or torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from digits_artifact import write_digits_artifact
from trainflow.data.cache.supervised_cache import build_supervised_cache
from trainflow.training.training_log import read_step_log

DRIVER = Path(__file__).parent / "task_training_driver.py"


def digits_cache(folder: Path, count: int = 100, size: int = 8, unlabelled_every: int = 0) -> Path:
    """A supervised cache of `count` digits; with unlabelled_every k, all but every k-th train record lose their label."""
    dataset = write_digits_artifact(folder / "dataset", count=count, size=size)
    if unlabelled_every:
        lines = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
        train = [line for line in lines if line["split"] == "train"]
        for number, line in enumerate(train):
            if number % unlabelled_every:
                line.pop("label")
                line["unlabelled"] = True
        (dataset / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    build_supervised_cache(dataset, folder / "cache")
    return folder / "cache"


def write_request(folder: Path, task: str, cache: Path, model: dict, train: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    request = {"task": task, "cache_dir": str(cache), "model_config": model, "train_config": train, "seed": 0,
               "checkpoint_dir": str(folder / "checkpoints"), "output_dir": str(folder / "model")}
    path = folder / "request.json"
    path.write_text(json.dumps(request))
    return path


def train_here(request: Path) -> None:
    """The driver's run in this process (cheaper than a new interpreter; same numbers on the same machine)."""
    from trainflow.stages.train import train_from_request
    from trainflow.training.run_training import TrainRequest

    train_from_request(TrainRequest.model_validate(json.loads(request.read_text())))


def run_driver(request: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(request), *extra], capture_output=True, text=True,
                          timeout=600, env=_clean_env())


def torchrun_driver(request: Path) -> subprocess.CompletedProcess:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(port), str(DRIVER), str(request)], capture_output=True, text=True, timeout=600,
                          env=_clean_env())


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")}
    shared = str(Path(__file__).parents[1] / "shared")
    env["PYTHONPATH"] = os.pathsep.join([shared, str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def step_losses(checkpoint_dir: Path) -> list[tuple[int, float]]:
    return [(record["step"], record["loss"]) for record in read_step_log(checkpoint_dir)]
