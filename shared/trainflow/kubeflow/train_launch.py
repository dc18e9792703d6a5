"""The cluster side of the train stage: launch a PyTorchJob/TrainJob and wait for it (`launch_training_job`).

The train stage (stages/train.py) calls this when `train.distributed` is set; the step then only
launches and waits (a CPU pod): it puts what the training pods read on the workspace (the cache, unless
it already lies on a mounted volume; the TrainRequest), starts the job named after the KFP run and task
through `JobLauncher` (so a retried step re-attaches to its job instead of starting a second one), and
fills the model folder and TensorBoard events from what rank 0 wrote. A cancelled run stops the step
with SIGTERM, which the stage runner (`run_stage`, stages/runner.py) turns into SystemExit, so the launcher's cleanup
deletes the job. `run_folder` is where a run's files live on the workspace
(`<workspace>/runs/<KFP run id>/<task>/`), so a retried pod of the same run resumes from its checkpoints.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from trainflow.atomic_files import atomic_directory
from trainflow.config import TrainConfig, section_payload
from trainflow.config.platform import DistributedConfig, PlatformConfig
from trainflow.errors import ConfigError
from trainflow.kubeflow.distributed_spec import (DistributedTrainingSpec, PvcMount, SecretKeyEnv, Toleration,
                                                 worker_command)

POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def run_folder(platform: PlatformConfig, run_id: str, task_name: str) -> Path:
    """`<workspace>/runs/<run id>/<task>`: this step's files on the workspace, the same on every retry.

    Failure: ConfigError if the run id or task name is empty or an unsubstituted KFP placeholder.
    """
    for what, value in (("run id", run_id), ("task name", task_name)):
        if not value.strip() or "{{" in value:
            raise ConfigError(f"the KFP {what} is {value!r}; the pipeline must pass the KFP placeholder for it "
                              "(dsl.PIPELINE_JOB_ID_PLACEHOLDER / dsl.PIPELINE_TASK_NAME_PLACEHOLDER).")
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip(".-") or "x" for value in (run_id, task_name)]
    return Path(platform.workspace_mount_path) / "runs" / safe[0] / safe[1]


def worker_environment(platform: PlatformConfig, with_mlflow: bool) -> tuple[dict[str, str], tuple[SecretKeyEnv, ...]]:
    """Plain and Secret-backed environment for every task or training pod that reads weights (and MLflow).

    HF_HOME/TORCH_HOME follow the weights-cache mount; with_mlflow adds MLFLOW_TRACKING_URI and the
    MLflow Secret's keys (optional: a missing Secret or key leaves the variable unset).
    """
    env = dict(platform.env)
    if platform.weights_cache_pvc:
        env["HF_HOME"] = f"{platform.weights_cache_mount_path}/huggingface"
        env["TORCH_HOME"] = f"{platform.weights_cache_mount_path}/torch"
    secrets: tuple[SecretKeyEnv, ...] = ()
    if with_mlflow:
        if platform.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = platform.mlflow_tracking_uri
        if platform.mlflow_secret:
            secrets = tuple(SecretKeyEnv(key, platform.mlflow_secret, key, optional=True)
                            for key in platform.mlflow_secret_keys)
    return env, secrets


def _pod_namespace(configured: str | None) -> str:
    if configured:
        return configured
    try:
        return POD_NAMESPACE_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError("train.distributed.namespace is not set and this is not a Kubernetes pod; set the "
                          "namespace the training job should run in.") from None


def distributed_spec(distributed: DistributedConfig, platform: PlatformConfig, *, image: str, request_path: Path,
                     with_mlflow: bool, namespace: str | None = None, metrics_port: int | None = None,
                     grace_seconds: float | None = None) -> DistributedTrainingSpec:
    """The training pods: the platform's volumes, environment, node pool and /dev/shm, the config's topology.

    Inputs: `train.distributed`, the platform section, the image the pipeline runs in, where the
    TrainRequest lies on the workspace, whether training logs to MLflow, the namespace (default:
    distributed.namespace, else this pod's), train.logging.prometheus_port (0/None: no metrics) and
    train.preemption.grace_seconds. Output: a checked DistributedTrainingSpec.
    Failure: ConfigError naming the field (via DistributedTrainingSpec) for an impossible combination.
    """
    volumes = [PvcMount(platform.workspace_pvc, platform.workspace_mount_path)]
    if platform.dataset_pvc:  # config paths such as model.base may point into it
        volumes.append(PvcMount(platform.dataset_pvc, platform.dataset_mount_path, read_only=True))
    if platform.weights_cache_pvc:
        volumes.append(PvcMount(platform.weights_cache_pvc, platform.weights_cache_mount_path))
    env, secrets = worker_environment(platform, with_mlflow)
    on_gpus = distributed.gpus_per_node > 0
    return DistributedTrainingSpec(
        backend=distributed.backend, nodes=distributed.nodes, gpus_per_node=distributed.gpus_per_node,
        image=image, namespace=namespace or _pod_namespace(distributed.namespace),
        command=worker_command(request_path), service_account=platform.service_account, env=env,
        secret_env=secrets, volumes=tuple(volumes), shm_size=platform.shm_size,
        node_selector=platform.node_selector if on_gpus else {},
        tolerations=tuple(Toleration(t.key, t.operator, t.value, t.effect) for t in platform.gpu_tolerations)
        if on_gpus else (),
        cpu_request=distributed.cpu_request, memory_request=distributed.memory_request,
        memory_limit=distributed.memory_limit, gpu_resource=platform.gpu_resource,
        runtime_name=distributed.runtime_name, delete_on_exit=distributed.delete_on_exit,
        backoff_limit=distributed.backoff_limit, active_deadline_seconds=distributed.active_deadline_seconds,
        metrics_port=metrics_port or None, grace_seconds=grace_seconds)


def launch_training_job(task: str, cache_dir: str, model_config: dict[str, Any], cfg: TrainConfig, seed: int,
                        model_dir: Path, logs_dir: Path | None, checkpoint_dir: str, platform: PlatformConfig, image: str,
                        run_id: str, task_name: str, api_client: Any = None,
                        launcher_options: dict[str, Any] | None = None,
                        mlflow_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train on the cluster: a PyTorchJob/TrainJob named after the KFP run and task, waited for; returns its summary.

    Puts what the training pods read on the workspace (the cache, unless it already lies on a mounted
    volume; the TrainRequest in `run_folder`), starts or re-attaches to the job through `JobLauncher`,
    and fills `model_dir` and `logs_dir` from what rank 0 wrote. `mlflow_env` (MLFLOW_RUN_ID: the
    pipeline run's `train` child run, and the store it is in) reaches the pods, so rank 0's step metrics
    land in it. `api_client` and `launcher_options` are for tests. Failures: ConfigError for paths off the shared volumes; the launcher's
    ClusterAccessError / TrainingJobFailed / TrainingJobTimeout.
    """
    from trainflow.kubeflow.cluster_api import kubernetes_api_client
    from trainflow.kubeflow.job_launcher import JobLauncher
    from trainflow.kubeflow.job_names import training_job_name

    if platform.mounted_folder(checkpoint_dir) is None:
        raise ConfigError(f"checkpoint_dir {checkpoint_dir} is not on a volume the training pods mount; leave it "
                          f"empty or put it under {platform.workspace_mount_path}.")
    folder = run_folder(platform, run_id, task_name)
    request_path = folder / "train-request.json"
    spec = distributed_spec(cfg.distributed, platform, image=image, request_path=request_path,
                            with_mlflow=cfg.logging.mlflow, metrics_port=cfg.logging.prometheus_port,
                            grace_seconds=cfg.preemption.grace_seconds)
    if mlflow_env:
        import dataclasses

        spec = dataclasses.replace(spec, env={**spec.env, **mlflow_env})
    # The worker never needs the launcher's settings, and they must not enter the run identity.
    worker_config = {k: v for k, v in section_payload(cfg).items() if k != "distributed"}
    request = {"task": task, "cache_dir": str(_cache_on_workspace(Path(cache_dir), folder, platform)),
               "model_config": model_config, "train_config": worker_config, "seed": seed,
               "checkpoint_dir": checkpoint_dir, "output_dir": str(folder / "model"),
               "tensorboard_dir": str(folder / "tensorboard") if logs_dir is not None else None}
    minutes = cfg.distributed.timeout_minutes
    launcher = JobLauncher(spec, api_client or kubernetes_api_client(),
                           **{"timeout_s": minutes * 60 if minutes else None, **(launcher_options or {})})
    result = launcher.run(training_job_name(run_id, task_name), request, request_path, Path(model_dir))
    if logs_dir is not None and (folder / "tensorboard").is_dir():
        shutil.copytree(folder / "tensorboard", logs_dir, dirs_exist_ok=True)
    return result.training_summary


def _cache_on_workspace(cache_dir: Path, folder: Path, platform: PlatformConfig) -> Path:
    """The cache where the training pods can read it: as is if on a mounted volume, else a copy in `folder`.

    KFP downloads input artifacts into the launcher pod's own disk, which other pods cannot see.
    The copy is made once per run (a retried step finds it complete) and atomically.
    """
    if platform.mounted_folder(str(cache_dir)) is not None:
        return cache_dir
    target = folder / "cache"
    if not target.is_dir():
        with atomic_directory(target) as staging:
            shutil.copytree(cache_dir, staging, dirs_exist_ok=True)
    return target
