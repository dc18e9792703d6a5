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


def consumers_of(spec: dict, producer: str) -> set[str]:
    """The root DAG's tasks that read an artifact of `producer`."""
    out = set()
    for name, task in spec["root"]["dag"]["tasks"].items():
        for artifact in task.get("inputs", {}).get("artifacts", {}).values():
            if artifact.get("taskOutputArtifact", {}).get("producerTask") == producer:
                out.add(name)
    return out


def test_a_train_val_refit_trains_evaluates_and_registers_on_its_own_cache_in_the_tuning_pipeline(tmp_path):
    tune = {"params": {"train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True}}, "workers": 2}
    outputs = {}
    for refit in ("train", "train_val"):
        config = write_config(tmp_path, platform={}, tune={**tune, "refit": refit})
        outputs[refit] = tmp_path / f"{refit}.yaml"
        assert main(["tune", "--config", str(config), "--compile", str(outputs[refit])]) == 0
    plain, _ = compiled(outputs["train"])
    spec, _ = compiled(outputs["train_val"])
    assert "refit-cache" in spec["root"]["dag"]["tasks"] and "refit-cache" not in plain["root"]["dag"]["tasks"]
    assert consumers_of(spec, "refit-cache") == {"train", "evaluate", "register-model"}
    assert not consumers_of(spec, "build-cache") & {"train", "evaluate", "register-model"}  # the study's cache: trials only
    assert consumers_of(plain, "build-cache") >= {"train", "evaluate", "register-model"}


def test_the_refit_cache_puts_every_val_record_in_train_and_keeps_the_test_records(tmp_path):
    from trainflow.artifacts import LocalArtifact
    from trainflow.stages.ingest_split import ingest_split
    from trainflow.stages.tuning import refit_cache

    ingest = {"sklearn_dataset": "diabetes", "split": {"train": 0.7, "val": 0.15, "test": 0.15}}
    facts = ingest_split(ingest, 0, LocalArtifact(str(tmp_path / "dataset")), LocalArtifact(str(tmp_path / "r.md")),
                         task="regression")
    cache = LocalArtifact(str(tmp_path / "cache"))
    refit_cache(str(tmp_path / "dataset"), {"architecture": "mlp"}, {}, "regression", cache)
    counts = {k: v for k, v in cache.metadata.items() if k.startswith("refit_")}
    assert counts["refit_train_records"] == facts["num_train"] + facts["num_val"]
    assert counts["refit_val_records"] == facts["num_val"] and counts["refit_test_records"] == facts["num_test"]
    assert (tmp_path / "cache" / "supervised.h5").is_file()
    assert not list(tmp_path.glob("refit-dataset-*"))
