"""The mixed-aspect-ratio example (pipelines/configs/digits-buckets.yaml) end to end with `trainflow run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.extended
def test_digits_on_mixed_canvases_run_end_to_end_with_trainflow_run(tmp_path, tiny_base_model, digits_classifier, capsys):
    from trainflow.cli import main
    from trainflow.demo.digits_dataset import write_mixed_aspect_digits

    write_mixed_aspect_digits(tmp_path / "digits-mixed")
    config = yaml.safe_load((REPO / "pipelines/configs/digits-buckets.yaml").read_text())
    config["ingest"].update(dataset_dir=str(tmp_path / "digits-mixed"), max_records=90)
    config["model"]["base"] = str(tiny_base_model)
    config["train"].update(max_epochs=2, batch_size=8, schedule={"name": "constant"}, logging={"tensorboard": False})
    config["score"].update(generation={"num_inference_steps": 2, "guidance_scale": 2.0, "batch_size": 16},
                           fid_features={"kind": "classifier", "path": str(digits_classifier)},
                           prompt_classifier=str(digits_classifier))
    config["register"].update(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", gates=[])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--state-dir", str(tmp_path / "state"),
                 "--summary-json", str(tmp_path / "summary.json")]) == 0
    printed = capsys.readouterr().out
    assert "registered model digits-buckets version 1" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {stage["stage"] for stage in summary["stages"]} >= {"ingest_split", "build_cache", "train", "evaluate",
                                                               "score_generation", "register_model"}
    runs = sorted((tmp_path / "state" / "pipeline-runs").iterdir())
    reports = [p for p in runs[-1].rglob("*") if p.is_file() and "Aspect-ratio buckets" in p.read_text(errors="ignore")]
    assert reports, "the ingest report shows the buckets"
    table = [line for line in reports[0].read_text().splitlines() if line.startswith("| ") and line[2].isdigit() and " × " in line]
    assert {line.split("|")[1].strip() for line in table} == {"24 × 40", "32 × 32", "40 × 24"}
    assert sum(int(cell) for line in table for cell in line.strip("|").split("|")[2:]) == 90
