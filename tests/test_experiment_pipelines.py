"""The compiled tuning and cross-validation pipelines: a ParallelFor with the configured parallelism, on the workspace."""

from __future__ import annotations

from pathlib import Path

import yaml

from trainflow.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, **sections) -> Path:
    config = yaml.safe_load((REPO / "pipelines/configs/digits-classifier.yaml").read_text())
    config.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def compiled(path: Path) -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all(path.read_text()))
    return documents[0], documents[1] if len(documents) > 1 else {}


def loop_policies(spec: dict) -> list[int]:
    tasks = [t for c in spec["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()]
    tasks += list(spec["root"]["dag"]["tasks"].values())
    return [t["iteratorPolicy"]["parallelismLimit"] for t in tasks if "parameterIterator" in t]


def executor_of(spec: dict, component_prefix: str) -> str:
    names = [name for name in spec["deploymentSpec"]["executors"] if name.startswith(f"exec-{component_prefix}")]
    assert len(names) == 1, names
    return names[0]


def test_the_tuning_pipeline_fans_trial_workers_out_with_the_configured_parallelism_on_the_workspace(tmp_path):
    config = write_config(tmp_path, platform={"workspace_pvc": "team-workspace"}, tune={
        "params": {"train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True}}, "workers": 3, "trials": 12,
        "storage": {"kind": "rdb", "secret": "optuna-db", "secret_key": "url"}})
    output = tmp_path / "tuning.yaml"
    assert main(["tune", "--config", str(config), "--compile", str(output)]) == 0
    spec, platform = compiled(output)
    assert loop_policies(spec) == [3]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    worker = executors[executor_of(spec, "tune-trials")]
    mounts = {m["mountPath"]: m["constant"] for m in worker["pvcMount"]}
    assert mounts["/workspace"] == "team-workspace"  # the journal and the trial folders live there
    # The database URL reaches the workers from the Secret, and never as a pipeline parameter.
    assert worker["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "TRAINFLOW_OPTUNA_STORAGE", "secretKey": "url"}]
    assert "postgresql" not in output.read_text()
    root_inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert root_inputs["study_root"]["defaultValue"] == "/workspace"


def test_the_cross_validation_pipeline_fans_folds_out_with_the_configured_parallelism_on_the_workspace(tmp_path):
    config = write_config(tmp_path, platform={}, cross_validation={"folds": 4, "repeats": 2, "workers": 3})
    output = tmp_path / "cv.yaml"
    assert main(["cross-validate", "--config", str(config), "--compile", str(output)]) == 0
    spec, platform = compiled(output)
    assert loop_policies(spec) == [3]
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3, 4, 5, 6, 7]"  # 4 folds × 2 repeats
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    fold = executors[executor_of(spec, "cross-validation-fold")]
    assert "/workspace" in [m["mountPath"] for m in fold["pvcMount"]]
