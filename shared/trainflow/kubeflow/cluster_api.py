"""Connect to the Kubernetes API and turn its refusals into sentences a user can act on."""

from __future__ import annotations

import json

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from trainflow.errors import UserFacingError
from trainflow.kubeflow.job_kinds import JobKind

_OPERATOR = {"pytorchjob": "the Kubeflow Training Operator v1 (kubeflow.org/v1 PyTorchJob)",
             "trainjob": "Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1 TrainJob)"}


class ClusterAccessError(UserFacingError):
    """The Kubernetes API could not be reached or refused what the launcher needs."""


def kubernetes_api_client(host: str | None = None, kubeconfig: str | None = None) -> k8s.ApiClient:
    """An API client: to `host` (no auth; tests and `kubectl proxy`), from `kubeconfig`, or from the pod.

    Without arguments it uses the pod's service account (in-cluster config), then ~/.kube/config.
    Failure: ClusterAccessError if none of these gives credentials.
    """
    if host:
        configuration = k8s.Configuration()
        configuration.host = host.rstrip("/")
        return k8s.ApiClient(configuration)
    if kubeconfig:
        return k8s_config.new_client_from_config(config_file=kubeconfig)
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError):
            raise ClusterAccessError(
                "no Kubernetes credentials: this is not a pod with a service account and there is no "
                "kubeconfig; run inside the cluster or pass a kubeconfig.") from None
    return k8s.ApiClient(configuration)


def api_message(error: ApiException) -> str:
    """The API server's own explanation (Status.message) or the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return message or error.reason or "no details"


def api_error(error: ApiException, action: str, kind: JobKind, name: str, namespace: str) -> UserFacingError:
    """One sentence for an API refusal while doing `action` (e.g. 'create') on job `name`."""
    where = f"{kind.kind} {name} in namespace {namespace}"
    detail = f"HTTP {error.status}: {api_message(error)}"
    if error.status in (401, 403):
        return ClusterAccessError(
            f"Kubernetes refused to {action} {where} ({detail}); grant the pipeline's service account "
            f"create/get/list/watch/delete on {kind.resource} and get/list on pods and pods/log "
            "(the trainflow Role in the manifests does).")
    if error.status == 404 and action == "create":
        return ClusterAccessError(
            f"the cluster has no {kind.resource} API ({detail}); install {_OPERATOR[kind.backend]} "
            "or choose the other distributed backend.")
    if error.status in (400, 422):
        return UserFacingError(f"Kubernetes rejected {where} ({detail}); fix the distributed training settings.")
    return ClusterAccessError(f"Kubernetes API error while trying to {action} {where} ({detail}).")
