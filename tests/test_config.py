import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainflow.config import RunConfig, load_config, section_payload
from trainflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, payload) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def base_payload(tmp_path) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "run_name": "x",
        "ingest": {"dataset_dir": str(tmp_path / "data")},
        "model": {"base": "org/some-model"},
        "register": {"model_name": "m"},
    }


def test_unknown_key_names_the_field_and_suggests_the_right_one(tmp_path):
    payload = base_payload(tmp_path)
    payload["train"] = {"learning_rat": 0.1, "max_epoch": 3}
    with pytest.raises(ConfigError, match=r"train\.learning_rat: unknown key; did you mean 'optimizer\.learning_rate'\?.*"
                                          r"train\.max_epoch: unknown key; did you mean 'max_epochs'\?"):
        load_config(write(tmp_path, payload))


def test_wrong_type_names_the_field_and_the_value(tmp_path):
    payload = base_payload(tmp_path)
    payload["train"] = {"max_epochs": "many"}
    with pytest.raises(ConfigError, match=r"train\.max_epochs: .*'many'"):
        load_config(write(tmp_path, payload))


def test_missing_required_section_is_named(tmp_path):
    payload = base_payload(tmp_path)
    del payload["register"]
    with pytest.raises(ConfigError, match=r"register: required field is missing"):
        load_config(write(tmp_path, payload))


def test_missing_local_path_is_named(tmp_path):
    payload = base_payload(tmp_path)
    payload["ingest"]["dataset_dir"] = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"ingest\.dataset_dir: path .*nope.* does not exist"):
        load_config(write(tmp_path, payload))


def test_split_fractions_must_sum_to_one(tmp_path):
    payload = base_payload(tmp_path)
    payload["ingest"]["split"] = {"train": 0.5, "val": 0.1, "test": 0.1}
    with pytest.raises(ConfigError, match=r"ingest\.split: .*sum to 1"):
        load_config(write(tmp_path, payload))


def test_invalid_yaml_and_missing_file_are_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_section_payload_round_trips_without_nulls(tmp_path):
    """KFP parameters cannot carry None; dropping Nones must not change any value."""
    config = RunConfig.model_validate(base_payload(tmp_path))
    payload = section_payload(config)
    assert "None" not in repr(payload)
    assert RunConfig.model_validate(payload) == config
    for section in RunConfig.model_fields.values():
        model = section.annotation
        for name, field in getattr(model, "model_fields", {}).items():
            if "None" in repr(field.annotation):
                assert field.default is None, f"{model.__name__}.{name} is nullable, so its default must be None"


@pytest.mark.parametrize("name", ["demo.yaml", "sd15-finetune.yaml", "sdxl-finetune.yaml", "digits-buckets.yaml"])
def test_shipped_configs_are_valid(name):
    load_config(REPO / "pipelines" / "configs" / name, check_local_paths=False)


def test_cli_prints_one_line_naming_the_field_without_traceback(tmp_path):
    payload = base_payload(tmp_path)
    payload["score"] = {"guidance_scale": 3}
    result = subprocess.run(
        [sys.executable, "-m", "trainflow", "validate", "--config", str(write(tmp_path, payload))],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "score.guidance_scale: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def all_verbs(parser=None, prefix=()) -> list[list[str]]:
    """Every verb and sub-verb of the trainflow CLI, read from its parser (a new verb is covered without listing it)."""
    import argparse

    from trainflow.cli import build_parser

    parser = parser or build_parser()
    found = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += all_verbs(sub, (*prefix, name))
    return found


def test_the_verb_list_is_read_from_the_parser():
    verbs = all_verbs()
    assert ["prune-runs"] in verbs and ["weights", "fetch"] in verbs and len(verbs) >= 16


@pytest.mark.parametrize("verb", all_verbs())
def test_every_verb_has_help(verb):
    result = subprocess.run([sys.executable, "-m", "trainflow", *verb, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: trainflow" in result.stdout
