"""`trainflow check-data`: counts and reasons, the JSON file, and exit codes 0 / 1 / 2."""

import json
import subprocess
import sys

import pytest
import yaml

from broken_corpus import build_broken_imagefolder, write_digit_imagefolder
from trainflow.cli import main


def write_config(tmp_path, ingest, task="text_to_image"):
    config = {"run_name": "check", "task": task, "ingest": ingest, "register": {"model_name": "m"},
              "model": {"base": str(tmp_path / "no-base-model")} if task == "text_to_image" else {"architecture": "small_cnn"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return build_broken_imagefolder(tmp_path_factory.mktemp("check") / "corpus")


def test_clean_data_exits_0_and_lists_every_kept_id(tmp_path, capsys):
    write_digit_imagefolder(tmp_path / "clean", 12)
    before = sorted(p.name for p in (tmp_path / "clean").rglob("*"))
    code = main(["check-data", "--config", write_config(tmp_path, {"dataset_dir": str(tmp_path / "clean")}),
                 "--json", str(tmp_path / "check.json")])
    assert code == 0
    assert "kept 12, rejected 0 of 12 records" in capsys.readouterr().out
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["kept"] == [f"images/digit-{i:04d}.png" for i in range(12)] and result["rejected"] == []
    assert sorted(p.name for p in (tmp_path / "clean").rglob("*")) == before, "nothing is written next to the data"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file is left behind"


def test_too_many_rejections_exit_1_with_reasons_grouped(tmp_path, capsys, broken):
    ingest = {"dataset_dir": str(broken.root), "label_column": "label", "target_columns": ["score"],
              "class_names": [str(i) for i in range(10)], "max_image_pixels": 1_000_000}
    code = main(["check-data", "--config", write_config(tmp_path, ingest), "--json", str(tmp_path / "check.json")])
    out = capsys.readouterr().out
    assert code == 1
    kept = sum(rule == "kept" for rule in broken.expected.values())
    assert f"kept {kept}, rejected {broken.lines - kept} of {broken.lines} records" in out
    invalid_paths = sum(rule == "invalid_path" for rule in broken.expected.values())
    assert f"{invalid_paths:8d}  invalid_path  e.g." in out and "check-data: FAIL:" in out and "above ingest.max_bad_fraction 0.2" in out
    assert "check-data: warning: 1 of 25 captions are longer than the 77 tokens" in out
    result = json.loads((tmp_path / "check.json").read_text())
    assert len(result["kept"]) == kept and len(result["rejected"]) == broken.lines - kept
    assert all(set(entry) == {"ref", "source", "reason"} for entry in result["rejected"])
    assert {"ref": "images/tiny.png", "source": next(e["source"] for e in result["rejected"] if e["ref"] == "images/tiny.png"),
            "reason": "image is 4x4, below ingest.min_image_size 8"} in result["rejected"]


def test_the_same_data_within_a_raised_limit_exits_0(tmp_path, broken):
    ingest = {"dataset_dir": str(broken.root), "label_column": "label", "target_columns": ["score"],
              "class_names": [str(i) for i in range(10)], "max_bad_fraction": 0.9}
    assert main(["check-data", "--config", write_config(tmp_path, ingest)]) == 0


@pytest.mark.parametrize("ingest, message", [
    ({"dataset_dir": "/nonexistent/data"}, "dataset folder /nonexistent/data does not exist"),
    ({"dataset_dir": "x", "max_bad_fraction": 2}, "ingest.max_bad_fraction"),
])
def test_config_or_source_errors_exit_2_with_one_sentence(tmp_path, capsys, ingest, message):
    assert main(["check-data", "--config", write_config(tmp_path, ingest)]) == 2
    assert message in capsys.readouterr().err


def test_the_installed_command_exits_2_on_usage_errors_without_a_traceback(tmp_path):
    usage = subprocess.run([sys.executable, "-m", "trainflow", "check-data"], capture_output=True, text=True)
    missing = subprocess.run([sys.executable, "-m", "trainflow", "check-data", "--config", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True)
    assert usage.returncode == 2 and "--config" in usage.stderr
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
