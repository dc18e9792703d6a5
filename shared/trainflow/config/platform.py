"""The `platform` section (how the compiled pipeline's pods are set up) and `train.distributed`.

Both are read when the pipeline is compiled or launched, never by a local run: a local run
has no volumes, secrets or node pools. The defaults match `manifests/` (PVCs
trainflow-workspace, trainflow-datasets and trainflow-weights-cache, the Secret
trainflow-mlflow-credentials, the MLflow Service trainflow-mlflow), so a cluster set up
from the manifests needs no `platform:` section at all.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from trainflow.config.names import PathText, PlainText, check_kubernetes_name, check_label_key, check_label_value
from trainflow.config.schema_base import Section

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# What the MLflow client, and boto3 for S3 artifacts, read from the environment.
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")


def _quantity(value: str | None) -> str | None:
    from kubernetes.utils import parse_quantity

    if not value:  # None or "" (off)
        return value
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a Kubernetes quantity; write e.g. '2Gi' or '512Mi'") from None
    return value


def _claim_name(value: str | None) -> str | None:
    if value and (len(value) > 63 or not _DNS1123_LABEL.fullmatch(value)):
        raise ValueError(f"{value!r} is not a PVC name (lower-case letters, digits and '-', at most 63)")
    return value


class TolerationConfig(Section):
    key: Annotated[str, AfterValidator(check_label_key)] | None = None
    operator: Literal["Equal", "Exists"] = "Exists"
    value: Annotated[str, AfterValidator(check_label_value)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _exists_takes_no_value(self) -> "TolerationConfig":
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("operator Exists matches any value; remove value or use operator Equal")
        return self


class PlatformConfig(Section):
    """Compile-time settings of the pipeline's pods; see the module docstring for the defaults."""

    image: PlainText | None = Field(None, description="Image of every task and training pod (default: TRAINFLOW_IMAGE at compile time, else ghcr.io/trainflow/trainflow:<version>).")
    workspace_pvc: str = Field("trainflow-workspace", description="ReadWriteMany PVC for checkpoints, train requests and the copy of the cache training pods read.")
    workspace_mount_path: PathText = "/workspace"
    # "Off" is the empty string, not null: KFP parameters cannot carry null, and a dropped null would bring the default back.
    dataset_pvc: str = Field("trainflow-datasets", description="PVC holding ingest.dataset_dir / ingest.table / ingest.hdf5; '' mounts none.")
    dataset_mount_path: PathText = "/data"
    weights_cache_pvc: str = Field("trainflow-weights-cache", description="PVC with HF_HOME (huggingface/) and TORCH_HOME (torch/) layouts; '' mounts none.")
    weights_cache_mount_path: PathText = Field("/cache", description="HF_HOME=<this>/huggingface and TORCH_HOME=<this>/torch are set on every task.")
    shm_size: str = Field("2Gi", description="Memory-backed /dev/shm for DataLoader workers on cache/train/evaluate/score; '' keeps the container's 64Mi.")
    node_selector: dict[Annotated[str, AfterValidator(check_label_key)], Annotated[str, AfterValidator(check_label_value)]] = Field({}, description="Node labels for GPU tasks and training pods, e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}.")
    gpu_tolerations: list[TolerationConfig] = Field(
        [TolerationConfig(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Tolerations for GPU tasks and training pods (default: the usual nvidia.com/gpu taint).")
    gpu_resource: Annotated[str, AfterValidator(check_label_key)] = "nvidia.com/gpu"
    mlflow_secret: Annotated[str, AfterValidator(check_kubernetes_name)] = Field("trainflow-mlflow-credentials", description="Secret whose keys become env vars (optional) on register, and on train when train.logging.mlflow; '' for none.")
    mlflow_secret_keys: list[str] = Field(list(MLFLOW_SECRET_KEYS), description="Keys of mlflow_secret to expose, each under its own name.")
    mlflow_tracking_uri: PlainText = Field("http://trainflow-mlflow:5000", description="MLFLOW_TRACKING_URI on register and train; register.tracking_uri, if set, wins; '' sets none.")
    service_account: Annotated[str, AfterValidator(check_kubernetes_name)] | None = Field(None, description="Account of the distributed training pods (default: the namespace's default account).")
    env: dict[str, PlainText] = Field({}, description="Extra environment on every task and training pod, e.g. {HF_HUB_OFFLINE: '1'} on an air-gapped cluster.")

    _claims = field_validator("workspace_pvc", "dataset_pvc", "weights_cache_pvc")(_claim_name)

    @field_validator("shm_size")
    @classmethod
    def _shm_is_quantity(cls, value: str) -> str:
        return _quantity(value)

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _uri_holds_no_credentials(cls, value: str) -> str:
        from trainflow.redaction import has_credentials

        if has_credentials(value):
            raise ValueError("the URI carries credentials, which would be written into the compiled pipeline; write "
                             "it without them and put MLFLOW_TRACKING_USERNAME/PASSWORD in the Secret mlflow_secret")
        return value

    @field_validator("mlflow_secret_keys")
    @classmethod
    def _keys_are_env_names(cls, value: list[str]) -> list[str]:
        bad = [key for key in value if not _ENV_NAME.fullmatch(key)]
        if bad:
            raise ValueError(f"{bad} cannot be environment variable names; a key is exposed under its own name")
        return value

    @field_validator("env")
    @classmethod
    def _env_holds_no_secrets_or_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name in MLFLOW_SECRET_KEYS:
                raise ValueError(f"{name} is a credential: put it in the Secret named by mlflow_secret, never in the config")
            if name in ("HF_HOME", "TORCH_HOME"):
                raise ValueError(f"{name} follows weights_cache_mount_path; set that instead")
        return value

    @model_validator(mode="after")
    def _mount_paths_are_distinct_and_absolute(self) -> "PlatformConfig":
        paths = {"workspace_mount_path": self.workspace_mount_path, "dataset_mount_path": self.dataset_mount_path,
                 "weights_cache_mount_path": self.weights_cache_mount_path}
        for field, path in paths.items():
            if not PurePosixPath(path).is_absolute() or path in ("/", "/dev/shm"):
                raise ValueError(f"{field}: {path!r} must be an absolute path other than / and /dev/shm")
        for field, path in paths.items():
            for other_field, other in paths.items():
                if field < other_field and (PurePosixPath(path).is_relative_to(other)
                                            or PurePosixPath(other).is_relative_to(path)):
                    raise ValueError(f"{field} {path} and {other_field} {other} overlap; mount each volume at its own path")
        return self

    def mounted_folder(self, path: str) -> str | None:
        """The mount path (of a volume this platform mounts) that holds `path`, or None."""
        mounts = [self.workspace_mount_path]
        mounts += [self.dataset_mount_path] if self.dataset_pvc else []
        mounts += [self.weights_cache_mount_path] if self.weights_cache_pvc else []
        target = PurePosixPath(path)
        return next((mount for mount in mounts if target.is_relative_to(mount)), None)


class DistributedConfig(Section):
    """`train.distributed`: the train step launches a PyTorchJob or TrainJob and waits for it."""

    backend: Literal["pytorchjob", "trainjob"] = Field("pytorchjob", description="pytorchjob: Training Operator v1 (kubeflow.org/v1); trainjob: Trainer v2 (trainer.kubeflow.org/v1alpha1).")
    nodes: int = Field(ge=1, le=10_000, description="Pods, one per node (required: 1 = one pod with gpus_per_node GPUs).")
    gpus_per_node: int = Field(1, ge=0, le=64, description="GPUs (= torchrun processes) per pod; 0 = CPU pods, one process each.")
    namespace: str | None = Field(None, description="Default: the namespace the pipeline's pods run in.")
    runtime_name: Annotated[str, AfterValidator(check_kubernetes_name)] = Field("torch-distributed", description="TrainJob only: the ClusterTrainingRuntime to start from.")
    cpu_request: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    delete_on_exit: bool = Field(True, description="Delete the job when the train step ends (success, failure or cancel).")
    backoff_limit: int | None = Field(None, ge=0, le=1000, description="PyTorchJob only: pod restarts before the job fails (default 3).")
    active_deadline_seconds: int | None = Field(None, ge=1, le=2**31 - 1, description="Kill the job after this long, server-side.")
    timeout_minutes: float | None = Field(None, gt=0, le=1e7, description="The train step stops waiting (and deletes the job) after this long.")

    @field_validator("cpu_request", "memory_request", "memory_limit")
    @classmethod
    def _are_quantities(cls, value: str | None) -> str | None:
        return _quantity(value)

    @field_validator("namespace")
    @classmethod
    def _is_namespace(cls, value: str | None) -> str | None:
        if value is not None and not _DNS1123_LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a namespace name")
        return value

    @model_validator(mode="after")
    def _pytorchjob_only_fields(self) -> "DistributedConfig":
        if self.backend == "trainjob" and self.backoff_limit is not None:
            raise ValueError("backoff_limit applies to pytorchjob only; a TrainJob's restarts come from its runtime")
        return self
