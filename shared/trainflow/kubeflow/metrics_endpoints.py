"""How Prometheus finds training processes: the pod label, annotation and container ports trainflow sets.

Every training process serves /metrics on train.logging.prometheus_port + its local rank
(trainflow.training.prometheus_metrics). The PodMonitor in manifests/overlays/gpu selects pods
labelled METRICS_LABEL and scrapes them two ways, because not every pod can declare a port:
- PyTorchJob pods declare one container port per local rank, named `metrics`, `metrics-1`, ...
  (PORT_NAME_PATTERN), and every declared port is scraped;
- a KFP train task (kfp-kubernetes cannot declare container ports) and TrainJob pods (the
  ClusterTrainingRuntime owns the container; a TrainJob may patch its pods' metadata but not
  their ports) carry METRICS_PORT_ANNOTATION instead, and the PodMonitor points the container
  named in ANNOTATED_CONTAINERS at that port: local rank 0 only, which on a TrainJob with
  several GPUs per node leaves ranks > 0 unscraped unless the runtime declares `metrics-<n>` ports.
"""

from __future__ import annotations

METRICS_LABEL = "trainflow.io/metrics"
METRICS_PORT_ANNOTATION = "trainflow.io/metrics-port"
PORT_NAME_PATTERN = "metrics(-[0-9]+)?"
ANNOTATED_CONTAINERS = ("main", "node")  # KFP's user container; the Trainer v2 torch runtime's container


def port_name(local_rank: int) -> str:
    """The container port name of a local rank (at most 15 characters, as Kubernetes requires)."""
    return "metrics" if local_rank == 0 else f"metrics-{local_rank}"
