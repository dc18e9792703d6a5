"""trainflow compile --katib: a Katib Experiment from the tune section, validated, whose trial really trains and reports."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from trainflow.cli import main
from trainflow.config import RunConfig, parse_section
from trainflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# Katib's StdOut collector's default filter (pkg/metricscollector/v1beta1/common/const.go, DefaultFilter).
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def compile_katib(tmp_path: Path, config: dict) -> tuple[int, Path]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    output = tmp_path / "katib.yaml"
    return main(["compile", "--config", str(path), "--katib", "--output", str(output)]), output


def shipped(name: str) -> dict:
    return yaml.safe_load((REPO / "pipelines" / "configs" / name).read_text())


def test_the_digits_search_space_becomes_katib_parameters_and_the_experiment_passes_every_check(tmp_path):
    from trainflow.kubeflow.katib_experiment import katib_problems

    code, output = compile_katib(tmp_path, {**shipped("digits-classifier.yaml"), "platform": {"workspace_pvc": "team-ws"}})
    assert code == 0
    body = yaml.safe_load(output.read_text())
    assert katib_problems(body) == []
    spec = body["spec"]
    assert (spec["algorithm"]["algorithmName"], spec["maxTrialCount"], spec["parallelTrialCount"]) == ("tpe", 12, 1)
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "val_accuracy",
                                 "metricStrategies": [{"name": "val_accuracy", "value": "latest"}]}
    assert spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    parameters = {p["name"]: p for p in spec["parameters"]}
    lr = parameters["log10-train-optimizer-learning-rate"]  # log-uniform as the logarithm's uniform range
    assert lr["parameterType"] == "double"
    assert (float(lr["feasibleSpace"]["min"]), float(lr["feasibleSpace"]["max"])) == pytest.approx((math.log10(3e-4), -2.0))
    assert parameters["train-batch-size"]["feasibleSpace"] == {"list": ["32", "64", "128"]}
    pod = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert "--param" in command and "train.optimizer.learning_rate=log10:${trialParameters.log10-train-optimizer-learning-rate}" in command
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "team-ws"}} in pod["volumes"]
    assert "tracking_uri" not in output.read_text() and "MLFLOW" not in output.read_text()  # trials never register


def test_a_broken_experiment_is_named_by_field(tmp_path):
    from trainflow.kubeflow.katib_experiment import katib_problems

    _, output = compile_katib(tmp_path, shipped("diabetes-regression.yaml"))
    body = yaml.safe_load(output.read_text())
    body["spec"]["maxTrialCount"] = "sixteen"
    assert any(p.startswith("spec.maxTrialCount:") for p in katib_problems(body))
    body = yaml.safe_load(output.read_text())
    body["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"] = ["true"]
    assert any("is not used in the trial Job" in p for p in katib_problems(body))
    body = yaml.safe_load(output.read_text())
    body["spec"]["trialTemplate"]["trialSpec"]["spec"]["backoffLimit"] = "none"
    assert any(p.startswith("spec.trialTemplate.trialSpec.spec.backoffLimit") for p in katib_problems(body))


@pytest.mark.parametrize("tune, named", [
    ({"train.optimizer.momentum": {"float": [0.5, 0.9], "when": {"train.optimizer.name": "sgd"}}}, "no conditional parameters"),
    ({"objectives": [{"metric": "val_mse"}, {"metric": "val_loss"}], "pruner": "none"}, "optimises one objective"),
    ({"pruner": "hyperband"}, "medianstop only"),
    ({"trials": None, "wall_time_minutes": 30}, "not wall time"),
])
def test_what_katib_cannot_express_is_one_sentence_and_exit_2(tmp_path, capsys, tune, named):
    config = shipped("diabetes-regression.yaml")
    params = tune.pop("train.optimizer.momentum", None)
    if params:
        config["tune"]["params"]["train.optimizer.momentum"] = params
    config["tune"].update(tune)
    code, output = compile_katib(tmp_path, config)
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


@settings(max_examples=60, deadline=None)
@given(low=st.floats(1e-8, 1.0), ratio=st.floats(1.0, 1e6), where=st.floats(0.0, 1.0))
def test_a_log_range_sampled_as_its_logarithm_comes_back_inside_the_range(low, ratio, where):
    from trainflow.config.tuning import ParamRange
    from trainflow.experiments.katib_trial import sampled_value

    high = low * ratio
    spec = ParamRange.model_validate({"float": [low, high], "log": True})
    x = math.log10(low) + where * (math.log10(high) - math.log10(low))
    value = sampled_value("train.optimizer.learning_rate", spec, f"log10:{x!r}")
    assert low * (1 - 1e-9) <= value <= high * (1 + 1e-9)


def test_a_value_katib_could_not_have_sampled_is_refused_naming_the_parameter():
    from trainflow.experiments.katib_trial import trial_config

    payload = shipped("diabetes-regression.yaml")
    good = ["train.optimizer.learning_rate=log10:-2", "train.optimizer.weight_decay=log10:-3", "model.dropout=0.1"]
    config, params = trial_config(payload, good)
    assert config.train.optimizer.learning_rate == pytest.approx(0.01) and config.model.dropout == 0.1
    for bad, named in (([*good[:2], "model.dropout=abc"], "--param model.dropout=abc: not a number"),
                       (good[:2], "--param model.dropout: no value given"),
                       ([*good, "model.width=3"], "--param model.width=3: give path=value with a path of tune.params"),
                       ([*good[:2], "model.dropout=0.9"], "outside")):
        with pytest.raises(ConfigError) as caught:
            trial_config(payload, bad)
        assert named in str(caught.value)


def test_the_rendered_trial_command_trains_and_prints_katib_metric_lines(tmp_path):
    config = shipped("diabetes-regression.yaml")
    config["train"].update({"max_epochs": 3, "device": "cpu", "mixed_precision": "no"})
    _, output = compile_katib(tmp_path, config)
    spec = yaml.safe_load(output.read_text())["spec"]
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    values = {"log10-train-optimizer-learning-rate": "-2.3", "log10-train-optimizer-weight-decay": "-3",
              "model-dropout": "0.05"}
    argv = [re.sub(r"\$\{trialParameters\.(.+?)\}", lambda m: values[m.group(1)], part).replace("${trialSpec.Name}", "trial-a")
            for part in command]
    argv[argv.index("--root") + 1] = str(tmp_path / "katib")
    assert argv[:3] == ["python", "-m", "trainflow.experiments.katib_trial"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)])}
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 2 and all(KATIB_FILTER.fullmatch(line) and line.startswith("val_mse=") for line in lines)
    reported = [float(line.split("=")[1]) for line in lines]
    assert reported[-1] == pytest.approx(min(reported[:-1]))  # the last line: the best checkpoint's value
    assert (tmp_path / "katib" / "trials" / "trial-a" / "model").is_dir()
    assert (tmp_path / "katib" / "data" / "cache").is_dir()


def test_rendering_a_katib_experiment_never_imports_the_stages():
    code = ("import sys, yaml; from trainflow.config import parse_section, RunConfig; "
            "from trainflow.kubeflow.katib_experiment import katib_experiment; "
            f"katib_experiment(parse_section(RunConfig, yaml.safe_load(open({str(REPO / 'pipelines/configs/diabetes-regression.yaml')!r})), 'c')); "
            "print(sorted(m for m in sys.modules if m.startswith('trainflow.stages')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
