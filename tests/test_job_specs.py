"""PyTorchJob/TrainJob specs: golden files, schema validation, job names, the torchrun env contract.

The golden files in tests/golden/ are the exact YAML the launcher would POST for a 2-node ×
4-GPU job of each kind. After an intended change to the builders, regenerate them with

    TRAINFLOW_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_job_specs.py -q

and review the diff before committing it.
"""

from __future__ import annotations

import copy
import re
import os
from pathlib import Path

import pytest
import yaml

from trainflow.errors import ConfigError
from trainflow.kubeflow.distributed_spec import DistributedTrainingSpec, PvcMount, Toleration, worker_command
from trainflow.kubeflow.job_names import is_job_name, training_job_name
from trainflow.kubeflow.job_schema import (CustomResourceInvalid, custom_resource_problems, pytorchjob_schema,
                                           validate_custom_resource)
from trainflow.kubeflow.job_specs import build_job, job_yaml

GOLDEN = Path(__file__).parent / "golden"
REQUEST = "/workspace/runs/trainflow-train-0123456789/train-request.json"


def gpu_spec(backend: str, **changes) -> DistributedTrainingSpec:
    fields = dict(
        backend=backend, nodes=2, gpus_per_node=4, image="ghcr.io/example/trainflow-cuda:0.1.0", namespace="ml-team",
        command=worker_command(REQUEST), service_account="trainflow-runner",
        env={"HF_HOME": "/weights/hf", "TORCH_HOME": "/weights/torch"},
        secret_env=[{"name": "MLFLOW_TRACKING_PASSWORD", "secret_name": "mlflow-credentials", "key": "password"}],
        volumes=[PvcMount("trainflow-workspace", "/workspace"), PvcMount("trainflow-datasets", "/data", read_only=True),
                 PvcMount("trainflow-weights", "/weights", read_only=True)],
        shm_size="16Gi", node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        cpu_request="8", memory_request="64Gi", memory_limit="96Gi", active_deadline_seconds=86400,
        metrics_port=9464, grace_seconds=25.0)
    fields.update(changes)
    return DistributedTrainingSpec(**fields)


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_two_node_four_gpu_job_matches_golden_file(backend):
    text = job_yaml(build_job(gpu_spec(backend), "trainflow-train-0123456789"))
    golden = GOLDEN / f"{backend}-2x4gpu.yaml"
    if os.environ.get("TRAINFLOW_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} is missing; run with TRAINFLOW_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8"), f"{backend} spec changed; see the module docstring"


def test_golden_files_validate_and_carry_the_topology():
    pytorchjob = yaml.safe_load((GOLDEN / "pytorchjob-2x4gpu.yaml").read_text())
    trainjob = yaml.safe_load((GOLDEN / "trainjob-2x4gpu.yaml").read_text())
    for body in (pytorchjob, trainjob):
        assert custom_resource_problems(body) == []
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
    assert pytorchjob["spec"]["nprocPerNode"] == "4" and "elasticPolicy" not in pytorchjob["spec"]
    master = replicas["Master"]["template"]["spec"]
    assert master["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in master["volumes"]
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["command"][:3] == ["torchrun", "-m", "trainflow"]
    assert trainjob["spec"]["runtimeRef"]["name"] == "torch-distributed"
    secret_env = [env for env in trainer["env"] if "valueFrom" in env]
    assert secret_env == [{"name": "MLFLOW_TRACKING_PASSWORD",
                           "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": "password"}}}]


def test_cpu_single_node_job_has_no_gpu_and_no_workers():
    spec = gpu_spec("pytorchjob", nodes=1, gpus_per_node=0, memory_limit=None, shm_size=None)
    body = build_job(spec, "trainflow-cpu")
    assert set(body["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert body["spec"]["nprocPerNode"] == "1"
    container = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "limits" not in container["resources"]
    trainjob = build_job(gpu_spec("trainjob", nodes=1, gpus_per_node=0, memory_limit=None), "trainflow-cpu")
    assert trainjob["spec"]["trainer"]["numProcPerNode"] == 1
    assert "limits" not in trainjob["spec"]["trainer"]["resourcesPerNode"]


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_unknown_field_is_rejected_with_its_path(backend):
    body = build_job(gpu_spec(backend), "trainflow-x")
    if backend == "pytorchjob":
        body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
        where = "spec.pytorchReplicaSpecs.Worker.template.spec.containers[0]"
    else:
        body["spec"]["trainer"]["gpusPerNode"] = 4
        where = "spec.trainer"
    with pytest.raises(CustomResourceInvalid) as caught:
        validate_custom_resource(body)
    message = str(caught.value)
    assert where in message and "was unexpected" in message and "trainflow-x" in message


@pytest.mark.parametrize("backend, path, bad, expected", [
    ("pytorchjob", ("spec", "pytorchReplicaSpecs", "Worker", "replicas"), "1", "spec.pytorchReplicaSpecs.Worker.replicas: '1' is not of type 'integer'"),
    ("pytorchjob", ("spec", "nprocPerNode"), 4, "spec.nprocPerNode: 4 is not of type 'string'"),
    ("trainjob", ("spec", "trainer", "numNodes"), "two", "spec.trainer.numNodes: 'two' is not of type 'integer'"),
    ("trainjob", ("spec", "trainer", "resourcesPerNode", "limits", "nvidia.com/gpu"), [4], "spec.trainer.resourcesPerNode.limits.nvidia.com/gpu"),
])
def test_wrong_type_is_rejected_naming_the_field(backend, path, bad, expected):
    body = build_job(gpu_spec(backend), "trainflow-x")
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    with pytest.raises(CustomResourceInvalid, match="does not match the") as caught:
        validate_custom_resource(body)
    assert expected in str(caught.value)


def test_schema_rejects_bad_identity_and_knows_required_fields():
    body = build_job(gpu_spec("pytorchjob"), "trainflow-x")
    renamed = copy.deepcopy(body)
    renamed["metadata"]["name"] = "Trainflow_X"
    assert any(problem.startswith("metadata.name") for problem in custom_resource_problems(renamed))
    wrong_kind = {**body, "kind": "TFJob"}
    assert "is not one of" in custom_resource_problems(wrong_kind)[0]
    unnamed = copy.deepcopy(body)
    del unnamed["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in problem for problem in custom_resource_problems(unnamed))
    # Required-ness comes from the kubernetes models' own setters, e.g. a container needs a name.
    assert "name" in pytorchjob_schema()["$defs"]["V1Container"]["required"]


@pytest.mark.parametrize("changes, fragment", [
    ({"nodes": 0}, "distributed.nodes must be an integer of at least 1"),
    ({"gpus_per_node": True}, "distributed.gpus_per_node"),
    ({"env": {"PET_NNODES": "2"}}, "PET_NNODES is set by the operator"),
    ({"env": {"MASTER_ADDR": "x"}}, "MASTER_ADDR is set by the operator"),
    ({"env": {"MLFLOW_TRACKING_PASSWORD": "x"}}, "set twice"),
    ({"shm_size": "lots"}, "distributed.shm_size 'lots' is not a Kubernetes quantity"),
    ({"volumes": [PvcMount("a", "/w"), PvcMount("b", "/w")]}, "mounts two claims at /w"),
    ({"volumes": [{"claim_name": "a", "mount_path": "/w", "readonly": True}]}, "unknown key(s) ['readonly']"),
    ({"volumes": [PvcMount("a", "relative")]}, "must be an absolute path"),
    ({"tolerations": [Toleration(key="k", operator="Exists", value="v")]}, "operator Exists takes no value"),
    ({"backend": "mpijob"}, "'mpijob' is not one of"),
    ({"namespace": "ML"}, "distributed.namespace 'ML'"),
])
def test_bad_settings_are_one_clear_config_error(changes, fragment):
    with pytest.raises(ConfigError) as caught:
        gpu_spec(changes.pop("backend", "pytorchjob"), **changes)
    assert fragment in str(caught.value)


def test_pytorchjob_only_settings_are_refused_for_trainjob():
    assert gpu_spec("pytorchjob", backoff_limit=1).backoff_limit == 1
    with pytest.raises(ConfigError, match="distributed.backoff_limit applies to PyTorchJob only"):
        gpu_spec("trainjob", backoff_limit=1)


def test_job_name_is_deterministic_short_and_a_dns_label():
    run_id = "7f0c1f9e-2d3b-4a57-9c1e-5b0c8a3d6e21"
    name = training_job_name(run_id, "train")
    assert name == training_job_name(run_id, "train")
    assert name.startswith("trainflow-train-") and is_job_name(name)
    assert training_job_name(run_id, "evaluate") != name
    assert training_job_name("another-run", "train") != name
    long = training_job_name(run_id, "Train The UNet With A Very Long Task Name For ParallelFor-Iteration-3")
    assert is_job_name(long) and len(long) <= 40


@pytest.mark.parametrize("run_id, task, prefix, fragment", [
    ("{{$.pipeline_job_uuid}}", "train", "trainflow", "unsubstituted placeholder"),
    ("", "train", "trainflow", "run id for the training job name is empty"),
    ("run", "train", "9lives", "must start with a letter"),
])
def test_job_name_refuses_unusable_inputs(run_id, task, prefix, fragment):
    with pytest.raises(ConfigError, match=fragment):
        training_job_name(run_id, task, prefix)


# The launch contract: the worker command passes no topology flags; torchrun must read them from the
# PET_* variables each operator sets (values as the operators' source code writes them).
OPERATOR_ENV = {
    "pytorchjob": {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "4",
                   "PET_MASTER_ADDR": "trainflow-x-master-0", "PET_MASTER_PORT": "23456",
                   "MASTER_ADDR": "trainflow-x-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "8", "RANK": "1"},
    "trainjob": {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "4",
                 "PET_MASTER_ADDR": "trainflow-x-node-0-0.trainflow-x", "PET_MASTER_PORT": "29500"},
}


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_torchrun_reads_the_topology_each_operator_sets(backend, monkeypatch):
    from torch.distributed.run import get_args_parser

    for key, value in OPERATOR_ENV[backend].items():
        monkeypatch.setenv(key, value)
    command = list(worker_command(REQUEST))
    args = get_args_parser().parse_args(command[1:])  # parser defaults read PET_* when it is built
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert (args.master_addr, args.master_port) == (OPERATOR_ENV[backend]["PET_MASTER_ADDR"],
                                                    int(OPERATOR_ENV[backend]["PET_MASTER_PORT"]))
    assert args.module and args.training_script == "trainflow"
    assert args.training_script_args == ["train-worker", "--request", REQUEST]


def test_metrics_and_grace_reach_the_training_pods_of_both_kinds():
    from trainflow.kubeflow.metrics_endpoints import METRICS_LABEL, METRICS_PORT_ANNOTATION

    pytorchjob = build_job(gpu_spec("pytorchjob"), "trainflow-train-0123456789")
    for replica in pytorchjob["spec"]["pytorchReplicaSpecs"].values():
        template = replica["template"]
        assert template["metadata"]["labels"] == {METRICS_LABEL: "true"}
        (container,) = template["spec"]["containers"]
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
            ("metrics", 9464), ("metrics-1", 9465), ("metrics-2", 9466), ("metrics-3", 9467)]  # one per local rank
        assert template["spec"]["terminationGracePeriodSeconds"] == 35  # 25 s of grace + 10
        assert {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": "30"} in container["env"]

    trainjob = build_job(gpu_spec("trainjob"), "trainflow-train-0123456789")
    (patch,) = trainjob["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {METRICS_LABEL: "true"}
    assert pod["metadata"]["annotations"][METRICS_PORT_ANNOTATION] == "9464"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 35
    assert {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": "30"} in trainjob["spec"]["trainer"]["env"]


def test_without_metrics_or_grace_the_pods_get_neither():
    body = build_job(gpu_spec("pytorchjob", metrics_port=None, grace_seconds=None), "trainflow-plain")
    template = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert "labels" not in template["metadata"] and "ports" not in template["spec"]["containers"][0]
    assert "terminationGracePeriodSeconds" not in template["spec"]
    assert all(env["name"] != "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" for env in template["spec"]["containers"][0]["env"])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("metrics_port", 65534, "train.logging.prometheus_port 65534 leaves no room for a port per process (4 per pod"),
    ("metrics_port", 0, "train.logging.prometheus_port 0 leaves no room"),
    ("grace_seconds", -1.0, "train.preemption.grace_seconds -1.0 must be a positive number."),
])
def test_bad_metrics_port_or_grace_is_one_config_error(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        gpu_spec("pytorchjob", **{field: value})
