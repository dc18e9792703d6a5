"""What both pipelines share: how each task's pod is set up, and the mapping from a run config to parameters.

The `platform` section of the run config is a compile-time setting (volume names, node pool,
Secret name are fixed in the pipeline spec), so the pipelines are built by factories from
`PodSettings`: `PodSettings.for_config(config)` for a cluster, `PodSettings()` (no platform)
for kfp.local, which ignores Kubernetes settings but would apply a task's environment.

Volumes are kfp-kubernetes mounts of named PVCs (manifests/: trainflow-workspace,
trainflow-datasets, trainflow-weights-cache), not KFP 2.17's pipeline workspace
(`dsl.PipelineConfig(workspace=...)`), because:
1. the training pods of a PyTorchJob/TrainJob, which the train step creates, must mount the
   workspace by claim name; the KFP workspace PVC is made per run under a name the backend
   chooses and no component input carries;
2. the weights cache and the datasets must outlive a run (seeded once, shared), while the
   workspace PVC is deleted with its run; named PVCs are needed for them anyway;
3. kfp.local deletes its workspace folder when a pipeline run ends, failed or not, so a local
   re-run could not resume training from it.
The cost: checkpoints stay on the workspace under runs/<KFP run id>/ until `trainflow prune-runs` removes them.

Metrics: with train.logging.prometheus_port set, the train task's pod gets the label and the port
annotation that the PodMonitor in manifests/overlays/gpu selects (kfp-kubernetes has no way to
declare a container port; see trainflow.kubeflow.metrics_endpoints). The port is fixed when the
pipeline is compiled, like the platform section.

Retries: KFP 2.17's retry policy has a count and a backoff but no exit-code filter, so a user
error (exit code 2, see trainflow.stages.runner) in a retried task would be retried. Every
pipeline therefore starts with `preflight`, a small CPU task without retries that checks the
config, the data path, the weights and the workspace; ingest waits for it and every other task
waits for ingest, so the tasks that retry (GPU stages: infrastructure failures; register:
MLflow outages; the distributed launcher: it re-attaches to its job) only start on a run that
passed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from components.component_defaults import TRAINFLOW_IMAGE

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"


@dataclass(frozen=True)
class PodSettings:
    """What the compiled tasks get. platform=None: a kfp.local run (no volumes, secrets or env)."""

    platform: Any = None  # trainflow.config.platform.PlatformConfig
    image: str = TRAINFLOW_IMAGE
    train_logs_to_mlflow: bool = False
    distributed_train: bool = False
    # beat_champion gates run the champion on the cache's test split, whose files may live on the volumes.
    register_needs_volumes: bool = False
    metrics_port: int | None = None  # train.logging.prometheus_port
    # register.experiment and register.tracking_uri (without credentials): where the pipeline run's parent run and
    # the stages' child runs are (MLFLOW_EXPERIMENT_NAME, and MLFLOW_TRACKING_URI over the platform's).
    mlflow_experiment: str = ""
    mlflow_tracking_uri: str = ""

    @classmethod
    def for_config(cls, config: Any) -> "PodSettings":
        """Cluster settings from a validated RunConfig: its platform section and train options."""
        from trainflow.redaction import split_credentials

        return cls(platform=config.platform, image=config.platform.image or TRAINFLOW_IMAGE,
                   train_logs_to_mlflow=config.train.logging.mlflow,
                   distributed_train=config.train.distributed is not None,
                   register_needs_volumes=any(gate.beat_champion for gate in config.registration.gates),
                   metrics_port=config.train.logging.prometheus_port or None,
                   mlflow_experiment=config.registration.experiment,
                   mlflow_tracking_uri=split_credentials(config.registration.tracking_uri)[0]
                   if config.registration.tracking_uri else "")

    def platform_argument(self) -> dict[str, Any]:
        """`platform=` for the preflight and train components: the section plus the image, or nothing locally."""
        if self.platform is None:
            return {}
        from trainflow.config import section_payload

        return {"platform": {**section_payload(self.platform), "image": self.image}}


def place(task: dsl.PipelineTask, settings: PodSettings, *, cpu: str, memory: str, gpu: bool = False,
          shm: bool = False, retries: int = 0, volumes: bool = True, mlflow: bool = False,
          training_metrics: bool = False) -> dsl.PipelineTask:
    """Resources and retries always; on a cluster also the image, volumes, environment, GPU node pool and Secret.

    gpu: one GPU, the platform's node selector and GPU tolerations. shm: a memory-backed /dev/shm
    for DataLoader workers. volumes: the workspace, dataset and weights-cache PVCs (with HF_HOME and
    TORCH_HOME pointing into the cache). mlflow: MLFLOW_TRACKING_URI (register.tracking_uri, else the platform's),
    MLFLOW_EXPERIMENT_NAME (register.experiment) and the MLflow Secret's keys as optional env vars (values never
    pass through the pipeline spec). training_metrics: the
    label and port annotation the PodMonitor scrapes, when settings.metrics_port is set.
    """
    task.set_cpu_request(cpu).set_memory_request(memory)
    if gpu:
        resource = settings.platform.gpu_resource if settings.platform is not None else GPU_RESOURCE
        task.set_accelerator_type(resource).set_accelerator_limit(1)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    platform = settings.platform
    if platform is None:
        return task
    from trainflow.kubeflow.train_launch import worker_environment

    if platform.image:
        task.set_container_image(platform.image)
    env, secrets = worker_environment(platform, with_mlflow=mlflow)
    if not volumes:
        env = {k: v for k, v in env.items() if k not in ("HF_HOME", "TORCH_HOME")}
    if mlflow:  # the image reference a registered version's lineage records (trainflow.registry.lineage)
        env.setdefault("TRAINFLOW_IMAGE", settings.image)
    if mlflow and settings.mlflow_experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = settings.mlflow_experiment
    if mlflow and settings.mlflow_tracking_uri:  # register.tracking_uri wins: every stage records where register does
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    for name, value in sorted(env.items()):
        task.set_env_variable(name, value)
    if secrets:
        kubernetes.use_secret_as_env(task, secret_name=platform.mlflow_secret,
                                     secret_key_to_env={entry.key: entry.name for entry in secrets}, optional=True)
    if volumes:
        _mount_volumes(task, platform)
    if shm and platform.shm_size:
        kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                                   size_limit=platform.shm_size)
    if training_metrics and settings.metrics_port:
        from trainflow.kubeflow.metrics_endpoints import METRICS_LABEL, METRICS_PORT_ANNOTATION

        kubernetes.add_pod_label(task, METRICS_LABEL, "true")
        kubernetes.add_pod_annotation(task, METRICS_PORT_ANNOTATION, str(settings.metrics_port))
    if gpu:
        for key, value in sorted(platform.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in platform.gpu_tolerations:
            kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value,
                                      effect=toleration.effect)
    return task


def _mount_volumes(task: dsl.PipelineTask, platform: Any) -> None:
    kubernetes.mount_pvc(task, pvc_name=platform.workspace_pvc, mount_path=platform.workspace_mount_path)
    if platform.dataset_pvc:
        kubernetes.mount_pvc(task, pvc_name=platform.dataset_pvc, mount_path=platform.dataset_mount_path)
    if platform.weights_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=platform.weights_cache_pvc, mount_path=platform.weights_cache_mount_path)


def stage_arguments(config, tracking_uri: str | None = None) -> dict:
    """Map a validated RunConfig onto the parameters every stage pipeline shares (one dict per section).

    Each pipeline module's `pipeline_arguments(config)` adds its own (the task, the score section).
    """
    from trainflow.config import section_payload
    from trainflow.redaction import redact, split_credentials

    register = section_payload(config.registration)
    if tracking_uri is not None and not register.get("tracking_uri"):
        register["tracking_uri"] = tracking_uri
    if register.get("tracking_uri"):  # parameters are command lines and records: user:password travel in the environment
        register["tracking_uri"] = split_credentials(register["tracking_uri"])[0]
    arguments = {
        "run_name": config.run_name,
        "seed": config.seed,
        "ingest_config": section_payload(config.ingest),
        "model_config": section_payload(config.model),
        "cache_config": section_payload(config.cache),
        "train_config": section_payload(config.train),
        "evaluate_config": section_payload(config.evaluate),
        "register_config": register,
        "params": redact(section_payload(config)),
    }
    return arguments
