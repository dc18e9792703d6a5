"""The pipeline: compiled YAML for the cluster, and a whole local run through kfp.local."""

from pathlib import Path

import pytest
import yaml

from conftest import small_config
from trainflow.config import RunConfig
from trainflow.registration_gates import failed_gates
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


def test_gates():
    gates = [Gate(metric="fid", beat_base=True), Gate(metric="prompt_accuracy", min=0.5)]
    assert failed_gates(gates, {"fid": 2.0, "base_fid": 9.0, "prompt_accuracy": 0.9}) == []
    reasons = failed_gates(gates, {"fid": 9.5, "base_fid": 9.0, "prompt_accuracy": 0.1})
    assert reasons == ["fid = 9.5000 does not beat the base model's 9.0000", "prompt_accuracy = 0.1000 is below the minimum 0.5"]


@pytest.mark.slow
def test_whole_pipeline_runs_locally_and_registers(local_runner, tmp_path, digits_dir, tiny_base_model, digits_classifier, capsys):
    from trainflow.local_run import print_summary, run_locally

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
    print_summary(result)
    printed = capsys.readouterr().out
    assert "registered model test-model version 1" in printed
    assert "prompt accuracy" in printed
