"""The PodMonitor of the gpu overlay: its shape, and which targets Prometheus would make of trainflow's pods.

kubernetes-validate has no schema for prometheus-operator's CRDs, so the shape is checked
here against the field names of monitoring.coreos.com/v1 PodMonitor. Then the monitor's
relabelings are applied, with Prometheus' semantics (anchored RE2-style regexes, `;`-joined
source labels), to the targets Kubernetes service discovery (role pod) makes of the pods
trainflow builds: a PyTorchJob's, a TrainJob's and the KFP train task's. Every training process
must become exactly one target, and nothing else a target.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_job_specs import gpu_spec  # noqa: E402
from test_manifests import _rendered  # noqa: E402
from trainflow.kubeflow.job_specs import build_job  # noqa: E402
from trainflow.kubeflow.metrics_endpoints import METRICS_LABEL, METRICS_PORT_ANNOTATION  # noqa: E402

# Field names of monitoring.coreos.com/v1 PodMonitor (prometheus-operator's CRD), for the parts we use.
SPEC_FIELDS = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels", "sampleLimit",
               "targetLimit", "attachMetadata", "scrapeClass"}
ENDPOINT_FIELDS = {"port", "portNumber", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                   "metricRelabelings", "params", "filterRunning", "tlsConfig", "followRedirects", "enableHttp2"}
RELABEL_FIELDS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}
ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase",
           "keepequal", "dropequal"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@pytest.fixture(scope="module")
def monitor() -> dict:
    (found,) = [obj for obj in _rendered("overlays/gpu") if obj["kind"] == "PodMonitor"]
    return found


def test_the_podmonitor_has_the_shape_of_the_crd(monitor):
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "trainflow"  # where the pipeline's and the jobs' pods run
    spec = monitor["spec"]
    assert set(spec) <= SPEC_FIELDS and {"selector", "podMetricsEndpoints"} <= set(spec)
    assert spec["selector"] == {"matchLabels": {METRICS_LABEL: "true"}}
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= ENDPOINT_FIELDS, endpoint
        assert endpoint["path"] == "/metrics" and DURATION.match(endpoint["interval"])
        for rule in endpoint["relabelings"]:
            assert set(rule) <= RELABEL_FIELDS and rule["action"].lower() in ACTIONS, rule
            assert all(LABEL_NAME.match(name) for name in rule.get("sourceLabels", []) + [rule.get("targetLabel", "x")])
            re.compile(rule.get("regex", "(.*)"))
    assert not any(obj["kind"] == "PodMonitor" for obj in _rendered("overlays/kind")), "kind has no prometheus-operator"


# ------------------------------------------------------------------ what Prometheus would scrape
def sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered(pod: dict, ip: str = "10.1.2.3") -> list[dict[str, str]]:
    """The targets Prometheus' Kubernetes SD (role pod) makes of `pod`: one per declared port, else one per container."""
    meta = {"__meta_kubernetes_pod_ip": ip}
    for key, value in (pod["metadata"].get("labels") or {}).items():
        meta[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{sanitized(key)}"] = "true"
    for key, value in (pod["metadata"].get("annotations") or {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{sanitized(key)}"] = value
    targets = []
    containers = [(c, "true") for c in pod["spec"].get("initContainers", [])] + [(c, "false") for c in pod["spec"]["containers"]]
    for container, init in containers:
        base = {**meta, "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_init": init}
        ports = container.get("ports") or []
        if not ports:
            targets.append({**base, "__address__": ip})
        for port in ports:
            targets.append({**base, "__address__": f"{ip}:{port['containerPort']}",
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])})
    return targets


def relabel(target: dict[str, str], rules: list[dict]) -> dict[str, str] | None:
    """Prometheus' keep/replace relabeling; None when the target is dropped."""
    labels = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("sourceLabels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace").lower()
        if action == "keep" and not match:
            return None
        if action == "replace" and match:
            labels[rule["targetLabel"]] = match.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1")))
    return labels


def scraped(monitor: dict, pod: dict) -> set[tuple[str, str]]:
    """(address, container) of each target scraped for `pod`: the operator's selector rule, then each endpoint's
    relabelings. Prometheus merges targets whose labels end up equal; the operator labels each with its container."""
    selector = [{"action": "keep", "regex": f"({value});true",
                 "sourceLabels": [f"__meta_kubernetes_pod_label_{sanitized(key)}",
                                  f"__meta_kubernetes_pod_labelpresent_{sanitized(key)}"]}
                for key, value in monitor["spec"]["selector"]["matchLabels"].items()]
    addresses = set()
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for target in discovered(pod):
            kept = relabel(target, selector + endpoint.get("relabelings", []))
            if kept is not None:
                addresses.add((kept["__address__"], kept["__meta_kubernetes_pod_container_name"]))
    return addresses


def pytorchjob_pod() -> dict:
    replicas = build_job(gpu_spec("pytorchjob"), "trainflow-train-0123456789")["spec"]["pytorchReplicaSpecs"]
    return replicas["Worker"]["template"]


def trainjob_pod(runtime_ports: list[dict]) -> dict:
    """A TrainJob pod: the runtime's `node` container with trainflow's metadata patch applied."""
    job = build_job(gpu_spec("trainjob"), "trainflow-train-0123456789")
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    metadata = patch["template"]["spec"]["template"]["metadata"]
    return {"metadata": metadata, "spec": {"containers": [{"name": "node", "ports": runtime_ports}]}}


def kfp_train_pod(**metadata) -> dict:
    return {"metadata": metadata, "spec": {"initContainers": [{"name": "kfp-launcher"}], "containers": [{"name": "main"}]}}


def test_each_local_rank_of_a_pytorchjob_pod_is_one_target(monitor):
    assert scraped(monitor, pytorchjob_pod()) == {(f"10.1.2.3:{port}", "pytorch") for port in (9464, 9465, 9466, 9467)}


@pytest.mark.parametrize("runtime_ports", [[], [{"name": "rdzv", "containerPort": 29400}, {"containerPort": 29500}]])
def test_a_trainjob_pod_is_scraped_on_its_annotated_port_whatever_ports_its_runtime_declares(monitor, runtime_ports):
    assert scraped(monitor, trainjob_pod(runtime_ports)) == {("10.1.2.3:9464", "node")}


def test_the_kfp_train_task_is_scraped_through_its_annotation_and_other_pods_are_not(monitor):
    labelled = kfp_train_pod(labels={METRICS_LABEL: "true"}, annotations={METRICS_PORT_ANNOTATION: "9464"})
    assert scraped(monitor, labelled) == {("10.1.2.3:9464", "main")}  # not the launcher's init container
    assert scraped(monitor, kfp_train_pod(annotations={METRICS_PORT_ANNOTATION: "9464"})) == set()  # no label
    assert scraped(monitor, kfp_train_pod(labels={"app": "trainflow-mlflow"})) == set()
    no_metrics = build_job(gpu_spec("pytorchjob", metrics_port=None), "x")["spec"]["pytorchReplicaSpecs"]["Master"]
    assert scraped(monitor, no_metrics["template"]) == set()
