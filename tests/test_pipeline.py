"""The pipeline: compiled YAML for the cluster, and a whole local run through kfp.local."""

from pathlib import Path

import pytest
import yaml

from conftest import small_config
from trainflow.config import RunConfig
from trainflow.registry.gates import failed_gates
from trainflow.config import Gate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from trainflow.cli import main

    output = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["compile", "--config", str(REPO / "pipelines/configs/sd15-finetune.yaml"), "--output", str(output)]) == 0
    documents = list(yaml.safe_load_all(output.read_text()))
    return documents[0], (documents[1] if len(documents) > 1 else {})


def test_gpu_stages_request_one_nvidia_gpu_and_retry(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    for task in ("train", "score-generation"):
        resources = executors[f"exec-{task}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert tasks[task]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["ingest-split"]["cachingOptions"].get("enableCache") is not True


def test_components_run_in_our_image_without_runtime_pip(compiled):
    spec, _ = compiled
    from components.component_defaults import TRAINFLOW_IMAGE

    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == TRAINFLOW_IMAGE
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_gpu_tasks_tolerate_gpu_node_taints(compiled):
    _, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_config_is_baked_in_as_defaults(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["model_config"]["defaultValue"]["base"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert params["train_config"]["defaultValue"]["mixed_precision"] == "auto"


# ------------------------------------------------------------------ cluster settings, both pipelines
GPU = "nvidia.com/gpu"
STAGE_TASKS = {"text-to-image": ("preflight", "ingest-split", "build-cache", "train", "evaluate", "score-generation"),
               "supervised": ("preflight", "ingest-split", "build-cache", "train", "evaluate")}
SHM_TASKS = ("build-cache", "train", "evaluate", "score-generation")
CUSTOM_PLATFORM = {"dataset_pvc": "team-images", "dataset_mount_path": "/mnt/images", "shm_size": "8Gi",
                   "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                   "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                       {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                   "env": {"HF_HUB_OFFLINE": "1"}}


def compile_config(tmp_path_factory, source: str, **changes) -> tuple[dict, dict, dict]:
    from trainflow.cli import main

    folder = tmp_path_factory.mktemp("compiled")
    payload = {**yaml.safe_load((REPO / "pipelines/configs" / source).read_text()), **changes}
    (folder / "run.yaml").write_text(yaml.safe_dump(payload))
    assert main(["compile", "--config", str(folder / "run.yaml"), "--output", str(folder / "pipeline.yaml")]) == 0
    spec, platform = yaml.safe_load_all((folder / "pipeline.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], payload


@pytest.fixture(scope="module", params=["text-to-image", "supervised"])
def cluster_pipeline(request, tmp_path_factory):
    source = "sd15-finetune.yaml" if request.param == "text-to-image" else "digits-classifier.yaml"
    spec, executors, payload = compile_config(tmp_path_factory, source, platform=CUSTOM_PLATFORM)
    return request.param, spec, executors, payload


def _executor(spec: dict, task: str) -> str:
    return spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")


def _upstream(spec: dict, task: str) -> set[str]:
    tasks = spec["root"]["dag"]["tasks"]
    seen, todo = set(), list(tasks[task].get("dependentTasks", []))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += tasks[name].get("dependentTasks", [])
    return seen


def test_every_task_that_touches_data_weights_or_checkpoints_mounts_them(cluster_pipeline):
    name, spec, executors, _ = cluster_pipeline
    for task in STAGE_TASKS[name]:
        config = executors[_executor(spec, task)]
        mounts = {(m["constant"], m["mountPath"]) for m in config["pvcMount"]}
        assert mounts == {("trainflow-workspace", "/workspace"), ("team-images", "/mnt/images"),
                          ("trainflow-weights-cache", "/cache")}, task
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]["env"]}
        assert env["HF_HOME"] == "/cache/huggingface" and env["TORCH_HOME"] == "/cache/torch", task
        assert env["HF_HUB_OFFLINE"] == "1", task


def test_dataloader_tasks_get_a_memory_backed_dev_shm(cluster_pipeline):
    name, spec, executors, _ = cluster_pipeline
    for task in set(SHM_TASKS) & set(STAGE_TASKS[name]):
        assert executors[_executor(spec, task)]["emptyDirMounts"] == [
            {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}], task


def test_every_gpu_task_requests_the_gpu_tolerates_the_taints_and_picks_the_node_pool(cluster_pipeline):
    name, spec, executors, _ = cluster_pipeline
    gpu_tasks = [task for task in spec["root"]["dag"]["tasks"]
                 if "accelerator" in spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"].get("resources", {})]
    assert set(gpu_tasks) == ({"build-cache", "train", "evaluate", "score-generation"} if name == "text-to-image"
                              else {"train"})
    for task in gpu_tasks:
        accelerator = spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]["resources"]["accelerator"]
        assert (accelerator["resourceType"], accelerator["resourceCount"]) == (GPU, "1")
        config = executors[_executor(spec, task)]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in config["tolerations"]
        assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in config["tolerations"]
        assert config["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    for task in ("preflight", "ingest-split", "register-model"):
        assert "tolerations" not in executors.get(_executor(spec, task), {}), f"{task} needs no GPU node"


def test_mlflow_credentials_arrive_as_optional_env_from_the_secret_only(cluster_pipeline):
    name, spec, executors, _ = cluster_pipeline
    secrets = executors[_executor(spec, "register-model")]["secretAsEnv"]
    assert len(secrets) == 1 and secrets[0]["secretName"] == "trainflow-mlflow-credentials" and secrets[0]["optional"]
    pairs = {(entry["secretKey"], entry["envVar"]) for entry in secrets[0]["keyToEnv"]}
    assert {("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_USERNAME"), ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_PASSWORD"),
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")} <= pairs
    # train.logging.mlflow is off in both configs: training gets no credentials.
    assert "secretAsEnv" not in executors[_executor(spec, "train")]
    for executor in spec["deploymentSpec"]["executors"].values():  # never a value in the pipeline spec
        names = {e["name"] for e in executor["container"].get("env", [])}
        assert not names & {"MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"}


def test_user_errors_are_caught_once_before_any_task_that_retries(cluster_pipeline):
    name, spec, _, _ = cluster_pipeline
    tasks = spec["root"]["dag"]["tasks"]
    assert "retryPolicy" not in tasks["preflight"] and tasks["preflight"]["cachingOptions"].get("enableCache") is not True
    retried = [task for task, body in tasks.items() if body.get("retryPolicy", {}).get("maxRetryCount")]
    assert "train" in retried and "register-model" in retried
    for task in tasks:
        if task != "preflight":
            assert "preflight" in _upstream(spec, task), f"{task} could start before preflight"
    # What preflight checks arrives as its inputs: every section, the platform and the run id.
    inputs = tasks["preflight"]["inputs"]["parameters"]
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["platform"]["runtimeValue"]["constant"]["dataset_mount_path"] == "/mnt/images"
    from trainflow.stages.runner import USER_ERROR_EXIT_CODE

    assert USER_ERROR_EXIT_CODE not in (0, 1), "a user error must be told apart from a crash"


def test_train_gets_the_run_and_task_placeholders_and_the_platform(cluster_pipeline):
    _, spec, _, _ = cluster_pipeline
    inputs = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["task_name"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"
    from components.component_defaults import TRAINFLOW_IMAGE

    assert inputs["platform"]["runtimeValue"]["constant"]["image"] == TRAINFLOW_IMAGE


def test_register_gets_what_its_lineage_records(cluster_pipeline):
    """The KFP run id and the pipeline's name as inputs, the image reference in its environment."""
    name, spec, _, _ = cluster_pipeline
    inputs = spec["root"]["dag"]["tasks"]["register-model"]["inputs"]["parameters"]
    assert inputs["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["pipeline_name"]["runtimeValue"]["constant"] == spec["pipelineInfo"]["name"] == f"trainflow-{name}"
    from components.component_defaults import TRAINFLOW_IMAGE

    container = spec["deploymentSpec"]["executors"][_executor(spec, "register-model")]["container"]
    assert {"name": "TRAINFLOW_IMAGE", "value": TRAINFLOW_IMAGE} in container["env"]
    assert container["image"] == TRAINFLOW_IMAGE


def test_the_stages_that_record_into_the_pipeline_runs_parent_run_get_its_id_and_store(cluster_pipeline):
    name, spec, _, payload = cluster_pipeline
    tasks = spec["root"]["dag"]["tasks"]
    recording = ["evaluate", "register-model"] + (["score-generation"] if name == "text-to-image" else [])
    for task in recording:
        assert tasks[task]["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://trainflow-mlflow:5000", task
        assert env["MLFLOW_EXPERIMENT_NAME"] == payload["register"].get("experiment", "trainflow"), task


def test_register_tracking_uri_is_every_recording_stages_store(tmp_path_factory):
    payload = yaml.safe_load((REPO / "pipelines/configs/digits-classifier.yaml").read_text())
    register = {**payload["register"], "tracking_uri": "https://mlflow.example", "experiment": "team"}
    spec, _, _ = compile_config(tmp_path_factory, "digits-classifier.yaml", register=register)
    for task in ("evaluate", "register-model"):
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]["env"]}
        assert (env["MLFLOW_TRACKING_URI"], env["MLFLOW_EXPERIMENT_NAME"]) == ("https://mlflow.example", "team"), task


@pytest.mark.parametrize("source", ["sd15-finetune.yaml", "digits-classifier.yaml"])
def test_distributed_train_is_a_cpu_launcher_that_retries_and_logs_to_mlflow(source, tmp_path_factory):
    payload = yaml.safe_load((REPO / "pipelines/configs" / source).read_text())
    train = {**payload["train"], "logging": {"mlflow": True},
             "distributed": {"backend": "trainjob", "nodes": 4, "gpus_per_node": 8}}
    spec, executors, _ = compile_config(tmp_path_factory, source, train=train, platform={"image": "reg.example/tf:1"})
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in container["resources"] and "tolerations" not in executors["exec-train"]
    assert container["image"] == "reg.example/tf:1"
    assert spec["root"]["dag"]["tasks"]["train"]["retryPolicy"]["maxRetryCount"] == 2  # a retry re-attaches
    assert executors["exec-train"]["secretAsEnv"][0]["secretName"] == "trainflow-mlflow-credentials"
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://trainflow-mlflow:5000"} in container["env"]
    assert {m["constant"] for m in executors["exec-train"]["pvcMount"]} >= {"trainflow-workspace"}


@pytest.mark.parametrize("source", ["sd15-finetune.yaml", "digits-classifier.yaml"])
def test_the_train_pod_is_labelled_for_the_podmonitor_when_metrics_are_on(source, tmp_path_factory):
    from trainflow.kubeflow.metrics_endpoints import METRICS_LABEL, METRICS_PORT_ANNOTATION

    payload = yaml.safe_load((REPO / "pipelines/configs" / source).read_text())
    on = {**payload["train"], "logging": {**payload["train"].get("logging", {}), "prometheus_port": 9464}}
    spec, executors, _ = compile_config(tmp_path_factory, source, train=on)
    assert executors[_executor(spec, "train")]["podMetadata"] == {
        "labels": {METRICS_LABEL: "true"}, "annotations": {METRICS_PORT_ANNOTATION: "9464"}}
    for task in spec["root"]["dag"]["tasks"]:
        if task != "train":
            assert "podMetadata" not in executors.get(_executor(spec, task), {}), task
    spec, executors, _ = compile_config(tmp_path_factory, source)  # off by default
    assert "podMetadata" not in executors[_executor(spec, "train")]
    launcher = {**on, "distributed": {"backend": "pytorchjob", "nodes": 2, "gpus_per_node": 8}}
    spec, executors, _ = compile_config(tmp_path_factory, source, train=launcher, platform={"image": "reg.example/tf:1"})
    assert "podMetadata" not in executors[_executor(spec, "train")], "the launcher pod trains nothing"


def test_the_local_pipelines_carry_no_kubernetes_settings(tmp_path):
    from kfp import compiler

    from pipelines.supervised import supervised_pipeline
    from pipelines.text_to_image import text_to_image_pipeline

    for pipeline in (text_to_image_pipeline, supervised_pipeline):
        compiler.Compiler().compile(pipeline, str(tmp_path / "local.yaml"))
        documents = list(yaml.safe_load_all((tmp_path / "local.yaml").read_text()))
        assert len(documents) == 1, "no platform spec: no volumes, secrets or node pools"
        for executor in documents[0]["deploymentSpec"]["executors"].values():
            assert "env" not in executor["container"], "kfp.local applies a task's env, e.g. HF_HOME=/cache"


def test_gates():
    gates = [Gate(metric="fid", beat_base=True), Gate(metric="prompt_accuracy", min=0.5)]
    assert failed_gates(gates, {"fid": 2.0, "base_fid": 9.0, "prompt_accuracy": 0.9}) == []
    reasons = failed_gates(gates, {"fid": 9.5, "base_fid": 9.0, "prompt_accuracy": 0.1})
    assert reasons == ["fid = 9.5000 does not beat the base model's 9.0000", "prompt_accuracy = 0.1000 is below the minimum 0.5"]


@pytest.mark.slow
def test_whole_pipeline_runs_locally_and_registers(local_runner, tmp_path, digits_dir, tiny_base_model, digits_classifier, capsys):
    from trainflow.commands.local_run import run_locally
    from trainflow.commands.run_summary import print_summary

    payload = small_config(digits_dir, tiny_base_model, digits_classifier, tmp_path,
                           register={"gates": [{"metric": "fid", "max": 1.0e6}]})
    config = RunConfig.model_validate(payload)
    result = run_locally(config, tmp_path / "state")
    outputs = result["outputs"]
    assert outputs["registration"].metadata["registered"] is True
    assert outputs["registration"].metadata["model_version"] == 1
    assert (Path(outputs["model"].path) / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert outputs["score_metrics"].metadata["fid"] > 0
    assert outputs["dataset"].metadata["num_records"] == 60
    from trainflow.commands.run_summary import run_summary

    seconds = {stage["stage"]: stage["seconds"] for stage in run_summary(result)["stages"]}
    assert all(isinstance(value, float) and value > 0 for value in seconds.values()), seconds  # build_cache too
    print_summary(result)
    printed = capsys.readouterr().out
    assert "registered model test-model version 1" in printed and "(see logs)" not in printed
    assert "prompt accuracy" in printed
