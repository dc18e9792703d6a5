"""The command the launcher renders for every training pod, run for real: torchrun with 2 local processes,
the environment each Kubeflow operator sets (single node here), training on a real cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainflow.artifacts import LocalArtifact
from trainflow.kubeflow.distributed_spec import worker_command
from trainflow.stages.build_cache import build_cache
from trainflow.stages.ingest_split import ingest_split

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def operator_env(backend: str, port: str) -> dict[str, str]:
    """What each operator puts on a pod (a 1-node job with nprocPerNode 2), pointed at this machine."""
    pet = {"PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": "2", "PET_MASTER_ADDR": "127.0.0.1",
           "PET_MASTER_PORT": port}
    if backend == "pytorchjob":  # the Training Operator also sets the pod-level rank variables
        return {**pet, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "1", "RANK": "0"}
    return pet  # Trainer v2 sets only PET_* and runs no torchrun itself


@pytest.fixture(scope="module")
def iris_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iris")
    ingest_split({"sklearn_dataset": "iris"}, 0, LocalArtifact(str(root / "dataset")), LocalArtifact(str(root / "report.md")),
                 task="classification")
    build_cache(str(root / "dataset"), {"architecture": "mlp"}, {}, LocalArtifact(str(root / "cache")), task="classification")
    return root / "cache"


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_rendered_worker_command_trains_under_each_operators_environment(backend, iris_cache, tmp_path):
    request = tmp_path / "train-request.json"
    request.write_text(json.dumps({
        "task": "classification", "cache_dir": str(iris_cache), "model_config": {"architecture": "mlp"},
        "train_config": {"max_epochs": 2, "batch_size": 8, "device": "cpu", "logging": {"tensorboard": False}},
        "seed": 0, "checkpoint_dir": str(tmp_path / "checkpoints"), "output_dir": str(tmp_path / "model"),
    }))
    command = list(worker_command(request))
    assert command[0] == "torchrun"
    command[0] = str(Path(sys.executable).parent / "torchrun")  # the venv's torchrun, as the image's PATH has it
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PET_")
             and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(command, env={**clean, **operator_env(backend, free_port()), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "model" / "trainflow_training.json").read_text())
    assert record["world_size"] == 2 and record["steps_run"] > 0
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert result.stdout.count("train: reached train.max_epochs") == 1, "only rank 0 reports"
