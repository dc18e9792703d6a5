"""What a distributed training job needs, independent of which operator runs it.

`DistributedTrainingSpec` is filled from the run configuration (nodes, GPUs, image, volumes, ...)
and turned into a PyTorchJob or a TrainJob by `trainflow.kubeflow.job_specs`. Every field is
checked when the spec is made, so a bad value is one ConfigError naming `distributed.<field>`
rather than an API-server rejection later.

The worker command is the engine's contract: `torchrun -m trainflow train-worker --request PATH`.
It passes no topology flags on purpose: torchrun reads each `--x-y` option's default from a
`PET_X_Y` variable (torch/distributed/argparse_util.py), and both operators set those on every pod:
- PyTorchJob (Training Operator v1.7+, no elasticPolicy): PET_NNODES (= replica count),
  PET_NODE_RANK, PET_NPROC_PER_NODE (= spec.nprocPerNode), PET_MASTER_ADDR/PET_MASTER_PORT
  (= `<job>-master-0`, port 23456), besides MASTER_ADDR/MASTER_PORT, WORLD_SIZE and RANK;
- TrainJob (Trainer v2 torch plugin): PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (from the
  Job completion index), PET_MASTER_ADDR (`<job>-node-0-0.<job>`) and PET_MASTER_PORT; it does not
  start torchrun, so the command must, and it rejects user env that sets any of those PET_ names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from kubernetes.utils import parse_quantity

from trainflow.errors import ConfigError
from trainflow.kubeflow.job_kinds import job_kind

# Set by the operators or by torchrun for each worker; a user value would fight them.
RESERVED_ENV = frozenset({"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"})
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_TAINT_EFFECTS = {None, "NoSchedule", "PreferNoSchedule", "NoExecute"}


def worker_command(request_path: str | PurePosixPath) -> tuple[str, ...]:
    """The command every training pod runs: torchrun over the engine's worker, reading `request_path`."""
    return ("torchrun", "-m", "trainflow", "train-worker", "--request", str(request_path))


@dataclass(frozen=True)
class PvcMount:
    """A PersistentVolumeClaim mounted into every training pod."""

    claim_name: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class SecretKeyEnv:
    """An environment variable read from one key of a Kubernetes Secret; the value never passes through us."""

    name: str
    secret_name: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class Toleration:
    """A pod toleration (e.g. key='nvidia.com/gpu', operator='Exists', effect='NoSchedule')."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None


def _items(value: Any, item_type: type, where: str) -> tuple:
    """Accept a list of dataclasses or of plain dicts (as read from YAML)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}.")
    items = []
    for entry in value:
        if isinstance(entry, dict):
            known = {f.name for f in dataclasses.fields(item_type)}
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ConfigError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(known)}.")
            entry = item_type(**entry)
        if not isinstance(entry, item_type):
            raise ConfigError(f"{where} entries must be {item_type.__name__} mappings, got {entry!r}.")
        items.append(entry)
    return tuple(items)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where} must map strings to strings (quote numbers), got {value!r}.")
    return dict(value)


def _check_quantity(value: str | None, where: str) -> None:
    if value is None:
        return
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{where} {value!r} is not a Kubernetes quantity; write e.g. '8', '500m', '16Gi'.") from None


def _check_count(value: Any, where: str, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer of at least {minimum}, got {value!r}.")


@dataclass(frozen=True)
class DistributedTrainingSpec:
    """Everything that shapes the training pods; see the module docstring for the topology contract.

    Fields: backend ('pytorchjob' | 'trainjob'), nodes, gpus_per_node (0 = CPU, one process per
    node), image, namespace, command (see `worker_command`), service_account, env (plain values),
    secret_env (values from Secrets), volumes (PVC mounts; the request file and the output folder
    must live on one of them), shm_size (memory-backed /dev/shm, None for none), node_selector,
    tolerations, cpu_request / memory_request / memory_limit, gpu_resource, runtime_name (TrainJob's
    ClusterTrainingRuntime), delete_on_exit, backoff_limit and ttl_seconds_after_finished
    (PyTorchJob only: a TrainJob's restarts are its runtime's JobSet failurePolicy),
    active_deadline_seconds, pod_annotations (Istio injection off by default: a sidecar keeps
    finished pods alive and can block the rendezvous port), image_pull_policy (PyTorchJob only),
    metrics_port (train.logging.prometheus_port: the pods are labelled and expose it for the
    PodMonitor, see trainflow.kubeflow.metrics_endpoints), grace_seconds (train.preemption.grace_seconds:
    torchrun and the kubelet wait longer than it after SIGTERM, so the engine can write its checkpoint).
    Failure: ConfigError naming `distributed.<field>` for any invalid value.
    """

    backend: str
    nodes: int
    gpus_per_node: int
    image: str
    namespace: str
    command: tuple[str, ...]
    service_account: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: tuple[SecretKeyEnv, ...] = ()
    volumes: tuple[PvcMount, ...] = ()
    shm_size: str | None = "1Gi"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    cpu_request: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    runtime_name: str = "torch-distributed"
    delete_on_exit: bool = True
    backoff_limit: int | None = None
    ttl_seconds_after_finished: int | None = None
    active_deadline_seconds: int | None = None
    pod_annotations: Mapping[str, str] = field(default_factory=lambda: {"sidecar.istio.io/inject": "false"})
    image_pull_policy: str | None = None
    metrics_port: int | None = None
    grace_seconds: float | None = None

    def __post_init__(self) -> None:
        normalise = {
            "command": tuple(self.command) if isinstance(self.command, (list, tuple)) else self.command,
            "secret_env": _items(self.secret_env, SecretKeyEnv, "distributed.secret_env"),
            "volumes": _items(self.volumes, PvcMount, "distributed.volumes"),
            "tolerations": _items(self.tolerations, Toleration, "distributed.tolerations"),
            "env": _string_map(self.env, "distributed.env"),
            "node_selector": _string_map(self.node_selector, "distributed.node_selector"),
            "pod_annotations": _string_map(self.pod_annotations, "distributed.pod_annotations"),
        }
        for name, value in normalise.items():
            object.__setattr__(self, name, value)
        self._check_shape()
        self._check_env()
        self._check_volumes()
        self._check_scheduling()

    @property
    def procs_per_node(self) -> int:
        """torchrun processes per pod: one per GPU, or one on a CPU node."""
        return self.gpus_per_node or 1

    def _check_shape(self) -> None:
        kind = job_kind(self.backend)
        _check_count(self.nodes, "distributed.nodes", 1)
        _check_count(self.gpus_per_node, "distributed.gpus_per_node", 0)
        _check_count(self.active_deadline_seconds, "distributed.active_deadline_seconds", 1, optional=True)
        for name in ("backoff_limit", "ttl_seconds_after_finished"):
            _check_count(getattr(self, name), f"distributed.{name}", 0, optional=True)
        for name in ("backoff_limit", "ttl_seconds_after_finished", "image_pull_policy"):
            if getattr(self, name) is not None and kind.backend == "trainjob":
                raise ConfigError(f"distributed.{name} applies to PyTorchJob only; a TrainJob takes it from its "
                                  "ClusterTrainingRuntime, so leave it unset.")
        if not isinstance(self.image, str) or not self.image.strip():
            raise ConfigError("distributed.image is empty; set the training image (the trainflow CUDA image).")
        if not isinstance(self.namespace, str) or not _DNS1123_LABEL.fullmatch(self.namespace):
            raise ConfigError(f"distributed.namespace {self.namespace!r} is not a Kubernetes namespace name.")
        if not self.command or not all(isinstance(part, str) and part for part in self.command):
            raise ConfigError("distributed.command must be a non-empty list of strings (see worker_command).")
        if self.service_account is not None and not _DNS1123_SUBDOMAIN.fullmatch(self.service_account):
            raise ConfigError(f"distributed.service_account {self.service_account!r} is not a valid account name.")
        if not isinstance(self.runtime_name, str) or not _DNS1123_SUBDOMAIN.fullmatch(self.runtime_name):
            raise ConfigError(f"distributed.runtime_name {self.runtime_name!r} is not a runtime name.")
        if self.image_pull_policy not in (None, "Always", "IfNotPresent", "Never"):
            raise ConfigError(f"distributed.image_pull_policy {self.image_pull_policy!r} is not one of "
                              "Always, IfNotPresent, Never.")
        for name in ("shm_size", "cpu_request", "memory_request", "memory_limit"):
            _check_quantity(getattr(self, name), f"distributed.{name}")
        if self.metrics_port is not None and not (
                isinstance(self.metrics_port, int) and 1 <= self.metrics_port <= 65536 - self.procs_per_node):
            raise ConfigError(f"train.logging.prometheus_port {self.metrics_port!r} leaves no room for a port per "
                              f"process ({self.procs_per_node} per pod, ports up to 65535); pick a lower port.")
        if self.grace_seconds is not None and not (isinstance(self.grace_seconds, (int, float)) and self.grace_seconds > 0):
            raise ConfigError(f"train.preemption.grace_seconds {self.grace_seconds!r} must be a positive number.")

    def _check_env(self) -> None:
        names = list(self.env) + [entry.name for entry in self.secret_env]
        for name in names:
            if not _ENV_NAME.fullmatch(name):
                raise ConfigError(f"distributed env name {name!r} is not a valid environment variable name.")
            if name in RESERVED_ENV or name.startswith("PET_"):
                raise ConfigError(f"distributed env {name} is set by the operator or torchrun for each worker; "
                                  "remove it (nodes and gpus_per_node set the topology).")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"distributed env {duplicates} is set twice (in env and secret_env); keep one.")
        for entry in self.secret_env:
            if not _DNS1123_SUBDOMAIN.fullmatch(entry.secret_name) or not entry.key:
                raise ConfigError(f"distributed.secret_env {entry.name}: secret {entry.secret_name!r} / key "
                                  f"{entry.key!r} is not a valid Secret reference.")

    def _check_volumes(self) -> None:
        paths = [mount.mount_path for mount in self.volumes]
        for mount in self.volumes:
            if not _DNS1123_LABEL.fullmatch(mount.claim_name) or len(mount.claim_name) > 63:
                raise ConfigError(f"distributed.volumes claim {mount.claim_name!r} is not a PVC name "
                                  "(lower-case letters, digits, '-', at most 63).")
            if not PurePosixPath(mount.mount_path).is_absolute() or mount.mount_path == "/dev/shm":
                raise ConfigError(f"distributed.volumes mount_path {mount.mount_path!r} must be an absolute "
                                  "path other than /dev/shm.")
            if paths.count(mount.mount_path) > 1:
                raise ConfigError(f"distributed.volumes mounts two claims at {mount.mount_path}; use one path each.")

    def _check_scheduling(self) -> None:
        for toleration in self.tolerations:
            if toleration.operator not in ("Equal", "Exists"):
                raise ConfigError(f"distributed.tolerations operator {toleration.operator!r} must be Equal or Exists.")
            if toleration.operator == "Exists" and toleration.value is not None:
                raise ConfigError(f"distributed.tolerations {toleration.key}: operator Exists takes no value.")
            if toleration.effect not in _TAINT_EFFECTS:
                raise ConfigError(f"distributed.tolerations effect {toleration.effect!r} must be NoSchedule, "
                                  "PreferNoSchedule or NoExecute.")

    def mount_holding(self, path: str | PurePosixPath, writable: bool = False) -> PvcMount | None:
        """The volume whose mount path contains `path` (a writable one if asked), or None."""
        target = PurePosixPath(path)
        for mount in self.volumes:
            if target.is_relative_to(mount.mount_path) and not (writable and mount.read_only):
                return mount
        return None
