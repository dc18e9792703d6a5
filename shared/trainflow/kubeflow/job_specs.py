"""Build a PyTorchJob or a TrainJob from a DistributedTrainingSpec, with the packages' typed models.

PyTorchJob (kubeflow.org/v1) is built with the kubeflow-training SDK's models around the kubernetes
client's pod models: one Master replica and `nodes - 1` Worker replicas with the same pod template,
`nprocPerNode` = processes per node, no elasticPolicy (static rendezvous at master 0), and
restartPolicy ExitCode so that a worker exiting 1-127 (a user error, which torchrun reports as 1)
fails the job at once while 128-255 (killed: OOM, eviction) restarts it, up to backoffLimit
(3 unless set; the operator's own default is no limit).

TrainJob (trainer.kubeflow.org/v1alpha1) is built with kubeflow-trainer-api's models: `trainer`
carries the image, command, env, numNodes, numProcPerNode and resourcesPerNode; everything else
about the pod (service account, node selector, tolerations, volumes, the container's mounts,
annotations) goes in a `runtimePatches` entry owned by manager `trainflow/launcher`, patching the
`node` replicated job of the referenced ClusterTrainingRuntime (torch-distributed by default).

With train.logging.prometheus_port set, the pods carry the label the PodMonitor selects and either
declare a container port per local rank (PyTorchJob) or name the port in an annotation (TrainJob;
see trainflow.kubeflow.metrics_endpoints). With a grace budget, terminationGracePeriodSeconds is
grace + 10 s and TORCH_ELASTIC_SHUTDOWN_TIMEOUT grace + 5 s: torchrun, which gets SIGTERM as the
pod's first process, forwards it to its workers and would SIGKILL them after 30 s otherwise.

Both are returned as plain dicts in the API's JSON shape, checked against their schema.
"""

from __future__ import annotations

from typing import Any

import math

import yaml
from kubernetes import client as k8s

from trainflow.kubeflow.distributed_spec import DistributedTrainingSpec
from trainflow.kubeflow.job_kinds import PYTORCHJOB, TRAINJOB, job_kind
from trainflow.kubeflow.job_schema import validate_custom_resource
from trainflow.kubeflow.metrics_endpoints import METRICS_LABEL, METRICS_PORT_ANNOTATION, port_name

PATCH_MANAGER = "trainflow/launcher"
# The Training Operator puts no limit on pod restarts when backoffLimit is unset; an OOM loop
# should end, and a resumed run loses at most one checkpoint interval per restart.
DEFAULT_BACKOFF_LIMIT = 3
JOB_LABELS = {"app.kubernetes.io/managed-by": "trainflow", "app.kubernetes.io/component": "training"}
_SERIALIZER = k8s.ApiClient()


def _env(spec: DistributedTrainingSpec) -> list[k8s.V1EnvVar]:
    env = dict(spec.env)
    if spec.grace_seconds is not None:
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(math.ceil(spec.grace_seconds) + 5))
    plain = [k8s.V1EnvVar(name=name, value=value) for name, value in env.items()]
    from_secrets = [
        k8s.V1EnvVar(name=entry.name, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
            name=entry.secret_name, key=entry.key, optional=entry.optional or None)))
        for entry in spec.secret_env]
    return plain + from_secrets


def _volumes(spec: DistributedTrainingSpec) -> list[k8s.V1Volume]:
    claims = dict.fromkeys(mount.claim_name for mount in spec.volumes)  # one volume per claim, in order
    volumes = [k8s.V1Volume(name=claim, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
        claim_name=claim)) for claim in claims]
    if spec.shm_size:
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=spec.shm_size)))
    return volumes


def _volume_mounts(spec: DistributedTrainingSpec) -> list[k8s.V1VolumeMount]:
    mounts = [k8s.V1VolumeMount(name=mount.claim_name, mount_path=mount.mount_path,
                                read_only=mount.read_only or None) for mount in spec.volumes]
    if spec.shm_size:
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return mounts


def _resources(spec: DistributedTrainingSpec) -> k8s.V1ResourceRequirements | None:
    requests = {name: value for name, value in (("cpu", spec.cpu_request), ("memory", spec.memory_request)) if value}
    limits = {"memory": spec.memory_limit} if spec.memory_limit else {}
    if spec.gpus_per_node:
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    if not requests and not limits:
        return None
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def _tolerations(spec: DistributedTrainingSpec) -> list[k8s.V1Toleration]:
    return [k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in spec.tolerations]


def _termination_grace(spec: DistributedTrainingSpec) -> int | None:
    return math.ceil(spec.grace_seconds) + 10 if spec.grace_seconds is not None else None


def _metrics_ports(spec: DistributedTrainingSpec) -> list[k8s.V1ContainerPort] | None:
    if spec.metrics_port is None:
        return None
    return [k8s.V1ContainerPort(name=port_name(rank), container_port=spec.metrics_port + rank, protocol="TCP")
            for rank in range(spec.procs_per_node)]


def _pod_template(spec: DistributedTrainingSpec) -> k8s.V1PodTemplateSpec:
    container = k8s.V1Container(
        name=PYTORCHJOB.rank0_container, image=spec.image, image_pull_policy=spec.image_pull_policy,
        command=list(spec.command), env=_env(spec) or None, resources=_resources(spec),
        volume_mounts=_volume_mounts(spec) or None, ports=_metrics_ports(spec))
    pod = k8s.V1PodSpec(
        containers=[container], volumes=_volumes(spec) or None, service_account_name=spec.service_account,
        node_selector=dict(spec.node_selector) or None, tolerations=_tolerations(spec) or None,
        termination_grace_period_seconds=_termination_grace(spec))
    labels = {METRICS_LABEL: "true"} if spec.metrics_port is not None else None
    metadata = (k8s.V1ObjectMeta(annotations=dict(spec.pod_annotations) or None, labels=labels)
                if spec.pod_annotations or labels else None)
    return k8s.V1PodTemplateSpec(metadata=metadata, spec=pod)


def pytorchjob_body(spec: DistributedTrainingSpec, name: str) -> dict[str, Any]:
    """The kubeflow.org/v1 PyTorchJob for `spec`, named `name`, as a plain dict (not yet validated)."""
    from kubeflow.training import (KubeflowOrgV1PyTorchJob, KubeflowOrgV1PyTorchJobSpec,
                                   KubeflowOrgV1ReplicaSpec, KubeflowOrgV1RunPolicy)

    replicas = {"Master": KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="ExitCode", template=_pod_template(spec))}
    if spec.nodes > 1:
        replicas["Worker"] = KubeflowOrgV1ReplicaSpec(replicas=spec.nodes - 1, restart_policy="ExitCode",
                                                      template=_pod_template(spec))
    job = KubeflowOrgV1PyTorchJob(
        api_version=PYTORCHJOB.api_version, kind=PYTORCHJOB.kind,
        metadata=k8s.V1ObjectMeta(name=name, namespace=spec.namespace, labels=dict(JOB_LABELS)),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.procs_per_node), pytorch_replica_specs=replicas,
            run_policy=KubeflowOrgV1RunPolicy(
                backoff_limit=DEFAULT_BACKOFF_LIMIT if spec.backoff_limit is None else spec.backoff_limit,
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                active_deadline_seconds=spec.active_deadline_seconds)))
    return _SERIALIZER.sanitize_for_serialization(job)


def _trainer_model(model: Any, kubernetes_object: Any) -> Any:
    """The kubeflow-trainer-api model for a kubernetes-client object (same JSON, other package)."""
    return model.from_dict(_SERIALIZER.sanitize_for_serialization(kubernetes_object))


def _runtime_patch(spec: DistributedTrainingSpec) -> Any:
    from kubeflow_trainer_api import models as m

    pod_spec = m.TrainerV1alpha1PodSpecPatch(
        service_account_name=spec.service_account,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[_trainer_model(m.IoK8sApiCoreV1Toleration, t) for t in _tolerations(spec)] or None,
        volumes=[_trainer_model(m.IoK8sApiCoreV1Volume, v) for v in _volumes(spec)] or None,
        termination_grace_period_seconds=_termination_grace(spec),
        containers=[m.TrainerV1alpha1ContainerPatch(
            name=TRAINJOB.rank0_container,
            volume_mounts=[_trainer_model(m.IoK8sApiCoreV1VolumeMount, v) for v in _volume_mounts(spec)])]
        if spec.volumes or spec.shm_size else None)
    # The runtime owns the container, so its ports cannot be patched: the annotation names the metrics port.
    annotations = dict(spec.pod_annotations)
    labels = None
    if spec.metrics_port is not None:
        annotations[METRICS_PORT_ANNOTATION] = str(spec.metrics_port)
        labels = {METRICS_LABEL: "true"}
    pod_metadata = (m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(annotations=annotations or None, labels=labels)
                    if annotations or labels else None)
    node_job = m.TrainerV1alpha1ReplicatedJobPatch(
        name=TRAINJOB.rank0_container,
        template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(
            template=m.TrainerV1alpha1PodTemplatePatch(metadata=pod_metadata, spec=pod_spec))))
    return m.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(
                spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[node_job]))))


def trainjob_body(spec: DistributedTrainingSpec, name: str) -> dict[str, Any]:
    """The trainer.kubeflow.org/v1alpha1 TrainJob for `spec`, named `name`, as a plain dict (not yet validated)."""
    from kubeflow_trainer_api import models as m

    resources = _resources(spec)
    trainer = m.TrainerV1alpha1Trainer(
        image=spec.image, command=list(spec.command), num_nodes=spec.nodes, num_proc_per_node=spec.procs_per_node,
        env=[_trainer_model(m.IoK8sApiCoreV1EnvVar, env) for env in _env(spec)] or None,
        resources_per_node=_trainer_model(m.IoK8sApiCoreV1ResourceRequirements, resources) if resources else None)
    job = m.TrainerV1alpha1TrainJob(
        api_version=TRAINJOB.api_version, kind=TRAINJOB.kind,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=spec.namespace,
                                                            labels=dict(JOB_LABELS)),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=spec.runtime_name, api_group=TRAINJOB.group,
                                                    kind="ClusterTrainingRuntime"),
            active_deadline_seconds=spec.active_deadline_seconds,
            trainer=trainer, runtime_patches=[_runtime_patch(spec)]))
    # to_dict, not model_dump: it writes the oneOf wrappers (Quantity) as their bare JSON value.
    return job.to_dict()


def build_job(spec: DistributedTrainingSpec, name: str) -> dict[str, Any]:
    """The custom resource for `spec`'s backend, named `name`, validated against its schema.

    Output: a plain dict ready to POST. Failure: CustomResourceInvalid if the body breaks the
    schema (which would mean the spec let through something the API cannot take).
    """
    builders = {PYTORCHJOB.backend: pytorchjob_body, TRAINJOB.backend: trainjob_body}
    body = builders[job_kind(spec.backend).backend](spec, name)
    validate_custom_resource(body)
    return body


def job_yaml(body: dict[str, Any]) -> str:
    """`body` as YAML with sorted keys, so the same job always prints the same text."""
    return yaml.safe_dump(body, sort_keys=True, default_flow_style=False)
