"""The platform section, the preflight check, the stage runner's exit codes, and distributed training from the train step."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from fake_kubernetes_api import FakeKubernetesApi, Phase, success_script

from trainflow.artifacts import LocalArtifact
from trainflow.config import parse_section
from trainflow.config.platform import DistributedConfig, PlatformConfig
from trainflow.errors import ConfigError, MissingWeightsError, UserFacingError
from trainflow.stages import train as train_stage
from trainflow.kubeflow.cluster_api import kubernetes_api_client
from trainflow.kubeflow.distributed_spec import worker_command
from trainflow.kubeflow.job_names import training_job_name
from trainflow.stages.preflight import preflight
from trainflow.stages.runner import CANCELLED_EXIT_CODE, USER_ERROR_EXIT_CODE, run_stage

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "5f1c0e0a-2b7d-4c55-9d3e-6a1b2c3d4e5f"
IRIS = {"ingest": {"sklearn_dataset": "iris"}, "model": {"architecture": "mlp"}, "cache": {},
        "train": {"max_epochs": 2}, "evaluate": {}, "score": None, "register": {"model_name": "iris"}}


def cluster_platform(tmp_path: Path, **changes) -> dict:
    """A platform whose mount paths are folders under tmp_path, standing in for the PVCs."""
    for name in ("workspace", "data", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    payload = {"workspace_mount_path": str(tmp_path / "workspace"), "dataset_mount_path": str(tmp_path / "data"),
               "weights_cache_mount_path": str(tmp_path / "cache"), **changes}
    return {**payload, "image": "registry.example/trainflow:test"}


def test_defaults_match_the_manifests():
    manifests = (REPO / "manifests/base/volumes.yaml").read_text() + (REPO / "manifests/README.md").read_text()
    platform = PlatformConfig()
    for name in (platform.workspace_pvc, platform.dataset_pvc, platform.weights_cache_pvc, platform.mlflow_secret):
        assert name in manifests
    assert platform.weights_cache_mount_path == "/cache"  # the images' HF_HOME=/cache/huggingface
    assert (platform.gpu_tolerations[0].key, platform.gpu_tolerations[0].operator) == ("nvidia.com/gpu", "Exists")


@pytest.mark.parametrize("payload, complaint", [
    ({"workspace_pvc": "Workspace_1"}, "workspace_pvc: 'Workspace_1' is not a PVC name"),
    ({"shm_size": "lots"}, "shm_size: 'lots' is not a Kubernetes quantity"),
    ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "env: AWS_SECRET_ACCESS_KEY is a credential: put it in the Secret"),
    ({"dataset_mount_path": "/workspace/data"}, "dataset_mount_path /workspace/data and workspace_mount_path /workspace overlap"),
    ({"gpu_tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]}, "operator Exists matches any value"),
    ({"weights_cache_mount_path": "cache"}, "weights_cache_mount_path: 'cache' must be an absolute path"),
])
def test_a_bad_platform_value_is_one_sentence_naming_the_field(payload, complaint):
    with pytest.raises(ConfigError) as caught:
        parse_section(PlatformConfig, payload, "platform")
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


def test_distributed_options_that_a_trainjob_cannot_take_are_refused():
    with pytest.raises(ConfigError, match="backoff_limit applies to pytorchjob only"):
        parse_section(DistributedConfig, {"backend": "trainjob", "nodes": 2, "backoff_limit": 2}, "train.distributed")
    with pytest.raises(ConfigError, match="memory_request: '16 GB' is not a Kubernetes quantity"):
        parse_section(DistributedConfig, {"nodes": 1, "memory_request": "16 GB"}, "train.distributed")
    with pytest.raises(ConfigError, match="nodes: required field is missing"):
        parse_section(DistributedConfig, {"backend": "pytorchjob"}, "train.distributed")


# ----------------------------------------------------------------------------------- preflight
def test_preflight_passes_a_good_run_and_reports_what_it_checked(tmp_path):
    report = LocalArtifact(str(tmp_path / "report.md"))
    findings = preflight("classification", dict(IRIS), report, platform=cluster_platform(tmp_path), run_id=RUN_ID)
    text = Path(report.path).read_text()
    assert "ingest.sklearn_dataset: iris ships with scikit-learn" in text
    assert f"workspace {tmp_path / 'workspace'}" in text and report.metadata["checks"] == len(findings)
    assert (tmp_path / "workspace" / "runs" / RUN_ID / "preflight" / "writable").is_file()


def test_preflight_names_a_dataset_path_the_pod_cannot_see_and_the_mounted_volumes(tmp_path):
    sections = {**IRIS, "ingest": {"dataset_dir": "/data/my-images"}, "model": {"base": "org/model"},
                "train": {}, "score": {"fid_features": {"kind": "classifier", "path": "/x"}}}
    with pytest.raises(ConfigError) as caught:
        preflight("text_to_image", sections, LocalArtifact(str(tmp_path / "r.md")), platform=cluster_platform(tmp_path),
                  run_id=RUN_ID)
    assert str(caught.value) == (f"ingest.dataset_dir: folder /data/my-images does not exist in the pod (mounted: "
                                 f"trainflow-datasets at {tmp_path / 'data'}, trainflow-weights-cache at "
                                 f"{tmp_path / 'cache'}); copy it onto a mounted volume or fix the path.")


def test_preflight_finds_base_weights_missing_from_an_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "images").mkdir()
    sections = {**IRIS, "ingest": {"dataset_dir": str(tmp_path / "images")}, "model": {"base": "org/not-seeded"},
                "train": {}, "score": {"fid_features": {"kind": "classifier", "path": str(tmp_path / "images")}}}
    with pytest.raises(MissingWeightsError, match="model.base: 'org/not-seeded' is not in the Hugging Face cache"):
        preflight("text_to_image", sections, LocalArtifact(str(tmp_path / "r.md")))


def test_preflight_needs_every_pipeline_part_of_a_local_base_model(tmp_path):
    from trainflow.stages.preflight import PIPELINE_PARTS

    (tmp_path / "images").mkdir()
    base = tmp_path / "sd"
    for part in PIPELINE_PARTS:
        (base / part).mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    sections = {**IRIS, "ingest": {"dataset_dir": str(tmp_path / "images")}, "model": {"base": str(base)},
                "train": {}, "score": {"fid_features": {"kind": "classifier", "path": str(tmp_path / "images")}}}
    assert f"model.base: {base} found at {base}" in preflight("text_to_image", sections,
                                                              LocalArtifact(str(tmp_path / "r.md")))
    (base / "vae").rmdir()
    with pytest.raises(MissingWeightsError, match=f"model.base: {base} lacks vae; a diffusers pipeline folder needs"):
        preflight("text_to_image", sections, LocalArtifact(str(tmp_path / "r.md")))


@pytest.mark.slow  # imports diffusers and transformers
def test_preflight_checks_the_parts_the_model_loader_needs():
    from trainflow.diffusion.model_families import SDXL
    from trainflow.diffusion.model_loading import REQUIRED_PARTS
    from trainflow.stages.preflight import PIPELINE_PARTS, SDXL_PARTS

    assert PIPELINE_PARTS == REQUIRED_PARTS
    assert set(PIPELINE_PARTS + SDXL_PARTS) == set(SDXL.parts)


def test_preflight_finds_a_config_that_does_not_fit_the_task(tmp_path):
    sections = {**IRIS, "train": {"early_stopping": {"monitor": "val_iou"}}}
    with pytest.raises(ConfigError, match="train.early_stopping.monitor: task classification does not log 'val_iou'"):
        preflight("classification", sections, LocalArtifact(str(tmp_path / "r.md")))


def test_preflight_finds_a_workspace_the_pods_cannot_write(tmp_path):
    platform = cluster_platform(tmp_path)
    (tmp_path / "workspace").rmdir()
    (tmp_path / "workspace").write_text("a file where the volume should be")  # unwritable even for root
    with pytest.raises(UserFacingError, match="workspace volume trainflow-workspace at .* is not writable"):
        preflight("classification", dict(IRIS), LocalArtifact(str(tmp_path / "r.md")), platform=platform, run_id=RUN_ID)


def test_preflight_refuses_distributed_training_without_a_cluster_and_checks_the_spec_with_one(tmp_path):
    sections = {**IRIS, "train": {"distributed": {"nodes": 2, "namespace": "ml"}}}
    with pytest.raises(ConfigError, match="train.distributed launches a PyTorchJob/TrainJob and needs a cluster"):
        preflight("classification", sections, LocalArtifact(str(tmp_path / "r.md")))
    findings = preflight("classification", sections, LocalArtifact(str(tmp_path / "r.md")),
                         platform=cluster_platform(tmp_path), run_id=RUN_ID)
    assert "train.distributed: pytorchjob with 2 node(s), 1 GPU(s) each" in findings
    bad = cluster_platform(tmp_path, env={"PET_NNODES": "4"})
    with pytest.raises(ConfigError, match="PET_NNODES is set by the operator or torchrun"):
        preflight("classification", sections, LocalArtifact(str(tmp_path / "r.md")), platform=bad, run_id=RUN_ID)


# ----------------------------------------------------------------------------------- stage runner
def test_a_user_error_exits_with_the_user_error_code_and_one_line(capsys):
    def ingest_split():
        raise ConfigError("ingest.table: file /data/t.csv does not exist")

    with pytest.raises(SystemExit) as caught:
        run_stage(ingest_split)
    assert caught.value.code == USER_ERROR_EXIT_CODE == 2
    assert capsys.readouterr().err == "trainflow: ingest_split failed: ingest.table: file /data/t.csv does not exist\n"


def test_sigterm_becomes_systemexit_so_cleanup_runs_and_the_old_handler_comes_back():
    cleaned = []

    def stage():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once: the handler raises
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as caught:
        run_stage(stage)
    assert caught.value.code == CANCELLED_EXIT_CODE == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------------- distributed train step
@pytest.fixture
def fake():
    with FakeKubernetesApi() as api:
        yield api


class DistributedRun:
    """The train step's inputs with a cache artifact off the shared volumes, as KFP downloads it."""

    def __init__(self, tmp_path: Path, backend: str, **distributed):
        self.platform = cluster_platform(tmp_path, env={"HF_HUB_OFFLINE": "1"})
        self.cache = tmp_path / "kfp-inputs" / "cache"
        self.cache.mkdir(parents=True)
        (self.cache / "supervised.h5").write_bytes(b"cache bytes")
        outputs = tmp_path / "kfp-outputs"
        self.model = LocalArtifact(str(outputs / "model"))
        self.metrics = LocalArtifact(str(outputs / "metrics"))
        self.logs = LocalArtifact(str(outputs / "tensorboard"))
        self.folder = tmp_path / "workspace" / "runs" / RUN_ID / "train"
        self.job = training_job_name(RUN_ID, "train")
        self.train_config = {"max_epochs": 3, "logging": {"mlflow": True},
                             "distributed": {"backend": backend, "nodes": 2, "gpus_per_node": 4, "namespace": "ml",
                                             **distributed}}

    def finish_training(self) -> None:
        """What rank 0 leaves on the workspace: the model folder (summary last) and TensorBoard events."""
        request = json.loads((self.folder / "train-request.json").read_text())
        output = Path(request["output_dir"])
        output.mkdir(parents=True)
        (output / "model.safetensors").write_bytes(b"weights")
        (output / "trainflow_training.json").write_text(json.dumps({
            "monitor": "val_loss", "best_value": 0.25, "best_step": 12, "best_epoch": 2.0, "steps_run": 18,
            "epochs_run": 3.0, "stop_reason": "reached max_epochs", "world_size": 8, "history": [{"step": 6}]}))
        Path(request["tensorboard_dir"]).mkdir(parents=True)
        (Path(request["tensorboard_dir"]) / "events.out.tfevents.1").write_bytes(b"events")

    def train(self, fake: FakeKubernetesApi, **launcher_options):
        return train_stage.train(
            task="classification", cache_dir=str(self.cache), model_config={"architecture": "mlp"},
            config=self.train_config, seed=7, model=self.model, metrics=self.metrics, logs=self.logs,
            platform=self.platform, run_id=RUN_ID, task_name="train", api_client=kubernetes_api_client(host=fake.url),
            launcher_options={"poll_interval_s": 0.001, "max_poll_interval_s": 0.005, "emit": lambda line: None,
                              **launcher_options})


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_distributed_train_step_launches_one_job_on_the_workspace_and_fills_its_outputs(backend, fake, tmp_path):
    run = DistributedRun(tmp_path, backend)
    fake.scripts[run.job] = success_script(f"{backend}s", on_success=run.finish_training)
    summary = run.train(fake)

    posts = fake.calls_to("POST", f"{backend}s")
    assert len(posts) == 1 and fake.problems == [] and fake.jobs == {}, "one job, valid, deleted at the end"
    body = posts[0]["body"]
    if backend == "pytorchjob":
        pod = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        container, mounts, volumes = pod["containers"][0], pod["containers"][0]["volumeMounts"], pod["volumes"]
        assert body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    else:
        container = body["spec"]["trainer"]
        patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        volumes = patch["template"]["spec"]["template"]["spec"]["volumes"]
        mounts = patch["template"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert container["numNodes"] == 2
    request_path = run.folder / "train-request.json"
    assert container["command"] == list(worker_command(request_path))
    assert {(m["name"], m["mountPath"]) for m in mounts} >= {
        ("trainflow-workspace", str(tmp_path / "workspace")), ("trainflow-datasets", str(tmp_path / "data")),
        ("trainflow-weights-cache", str(tmp_path / "cache")), ("dshm", "/dev/shm")}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in volumes
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_HOME"]["value"] == f"{tmp_path / 'cache'}/huggingface" and env["HF_HUB_OFFLINE"]["value"] == "1"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "trainflow-mlflow-credentials", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}

    request = json.loads(request_path.read_text())
    assert request["cache_dir"] == str(run.folder / "cache") and (run.folder / "cache" / "supervised.h5").is_file()
    assert request["checkpoint_dir"] == str(run.folder / "checkpoints")
    assert "distributed" not in request["train_config"] and request["train_config"]["max_epochs"] == 3
    assert (Path(run.model.path) / "model.safetensors").read_bytes() == b"weights"
    assert (Path(run.logs.path) / "events.out.tfevents.1").read_bytes() == b"events"
    assert run.metrics.metadata["best_value"] == 0.25 and run.metrics.metadata["stop_reason"] == "reached max_epochs"
    assert run.model.metadata["world_size"] == 8 and "history" not in run.model.metadata
    assert summary["best_step"] == 12


def test_a_cancelled_train_step_deletes_its_job(fake, tmp_path):
    run = DistributedRun(tmp_path, "trainjob")
    fake.scripts[run.job] = [Phase("Created"), Phase("Running")]

    def sigterm_while_waiting(_seconds):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    with pytest.raises(SystemExit) as caught:
        run_stage(run.train, fake=fake, sleep=sigterm_while_waiting)
    assert caught.value.code == CANCELLED_EXIT_CODE
    assert len(fake.calls_to("POST", "trainjobs")) == 1 and len(fake.calls_to("DELETE", "trainjobs")) == 1
    assert fake.jobs == {} and not Path(run.model.path).exists()


def test_training_in_the_pod_keeps_checkpoints_on_the_workspace_per_run(tmp_path, monkeypatch):
    from trainflow.stages import train as train_stage

    received = {}
    monkeypatch.setattr(train_stage, "train_from_request",
                        lambda request: received.update(request.model_dump()) or {"stop_reason": "done"})
    for run_id in (RUN_ID, "another-run"):
        train_stage.train(task="classification", cache_dir="/c", model_config={}, config={"max_epochs": 1}, seed=0,
                           model=LocalArtifact(str(tmp_path / "m")), metrics=LocalArtifact(str(tmp_path / "x")),
                           platform=cluster_platform(tmp_path), run_id=run_id, task_name="train")
        assert received["checkpoint_dir"] == str(tmp_path / "workspace" / "runs" / run_id / "train" / "checkpoints")
    with pytest.raises(ConfigError, match="the KFP run id is '{{\\$.pipeline_job_uuid}}'"):
        train_stage.train(task="classification", cache_dir="/c", model_config={}, config={}, seed=0,
                           model=LocalArtifact(str(tmp_path / "m")), metrics=LocalArtifact(str(tmp_path / "x")),
                           platform=cluster_platform(tmp_path), run_id="{{$.pipeline_job_uuid}}", task_name="train")
