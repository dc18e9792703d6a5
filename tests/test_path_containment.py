"""Names from the config never lead a run's writes or deletes out of its state directory.

Hostile names (../, absolute paths, NUL, very long, unicode, separators) either fail at load with one
ConfigError line or give folders inside the state directory; symlinks planted in the state directory
are caught when a folder is used; a dataset is never read from / or a system folder.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from trainflow.commands.local_run import checkpoint_folder, run_locally
from trainflow.config import RunConfig, load_config
from trainflow.contained_paths import path_inside, remove_inside, state_directory
from trainflow.errors import ConfigError, UserFacingError
from trainflow.experiments.study_storage import study_folder

REPO = Path(__file__).resolve().parents[1]
VALID = {
    "run_name": "contained", "task": "regression",
    "ingest": {"sklearn_dataset": "diabetes", "max_records": 60},
    "model": {"architecture": "mlp", "hidden_sizes": [8]},
    "train": {"max_epochs": 1, "batch_size": 8},
    "register": {"model_name": "contained-model"},
}
HOSTILE_NAMES = st.one_of(
    st.sampled_from(["../escape", "..", ".", "../../etc/passwd", "/etc/passwd", "/", "a/../../b", "a/b", "a\\b",
                     "a\x00b", "x" * 5000, "-rf", ".hidden", "name with space", "ünïcode", "名前", "a\nb", "", " ",
                     "models:/x@y", "v1", "latest", "a:b", "CON", "a..b", "ok-name_1.2"]),
    st.text(max_size=40),
    st.text(alphabet="./\\\x00-_aZ9 ", max_size=20),
)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_with(tmp_path: Path, changes: dict) -> RunConfig | ConfigError:
    payload = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        node = payload
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(payload, allow_unicode=True), encoding="utf-8")
    try:
        return load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error) and len(str(error)) < 4000
        return error


@SETTINGS
@given(name=HOSTILE_NAMES)
@example(name="../escape")
def test_a_hostile_run_name_is_refused_or_stays_inside_the_state_directory(tmp_path, name):
    result = load_with(tmp_path, {"run_name": name})
    if isinstance(result, ConfigError):
        assert "run_name" in str(result)
        return
    state = tmp_path / "state"
    folder = checkpoint_folder(result, state)
    assert folder.parent == (state / "checkpoints").resolve() and folder.name == name
    assert study_folder(state.resolve(), result.run_name).is_relative_to(state.resolve())


def test_the_refused_names_say_the_rule():
    for name in ("../escape", "a/b", "a\x00b", "x" * 101, "名前", ".hidden"):
        with pytest.raises(ConfigError, match=r"run_name: run_name must start with a letter or digit and hold only "
                                              r"letters, digits, '\.', '_' and '-' \(at most 100 characters\)"):
            load_with_raise(name)


def load_with_raise(name: str) -> None:
    from trainflow.config import parse_section

    parse_section(RunConfig, {**VALID, "run_name": name}, "run.yaml")


@SETTINGS
@given(field=st.sampled_from(["register.model_name", "register.experiment", "register.champion_alias",
                              "tune.study_name", "platform.mlflow_secret", "platform.service_account"]),
       name=HOSTILE_NAMES)
def test_other_names_are_refused_with_one_line_or_accepted(tmp_path, field, name):
    changes = {field: name}
    if field.startswith("tune."):
        changes["tune.params"] = {"train.optimizer.learning_rate": {"float": [0.001, 0.01]}}
        changes["tune.objectives"] = [{"metric": "val_loss"}]
    result = load_with(tmp_path, changes)
    if isinstance(result, RunConfig) and field == "tune.study_name":
        assert study_folder(tmp_path.resolve(), name).parent == (tmp_path / "tuning").resolve()
    if isinstance(result, RunConfig) and field == "register.model_name":
        assert "/" not in name and ":" not in name and "@" not in name


@pytest.mark.parametrize(("field", "value"), [
    ("ingest.dataset_dir", "/"), ("ingest.dataset_dir", "/etc"), ("ingest.dataset_dir", "/usr"),
    ("ingest.dataset_dir", "/proc/self"), ("ingest.dataset_dir", "/sys/kernel"), ("ingest.table", "/etc/passwd.csv"),
    ("ingest.hdf5", "/dev/zero"), ("ingest.table", "/proc/self/environ.csv"),
])
def test_a_dataset_in_a_system_folder_is_refused(tmp_path, field, value):
    changes = {"ingest.sklearn_dataset": None, field: value}
    result = load_with(tmp_path, changes)
    assert isinstance(result, ConfigError)
    assert f"{field.split('.')[-1]}: {value!r} is / or a system folder" in str(result)


def test_a_symlink_to_a_system_folder_is_refused_too(tmp_path):
    (tmp_path / "data").symlink_to("/etc")
    result = load_with(tmp_path, {"ingest.sklearn_dataset": None, "ingest.dataset_dir": str(tmp_path / "data")})
    assert isinstance(result, ConfigError) and "system folder (/etc)" in str(result)


@pytest.mark.parametrize("field", ["ingest.dataset_dir", "model.weights_path", "cache.cache_root",
                                   "score.reference_cache", "platform.workspace_mount_path"])
def test_a_nul_byte_in_a_path_is_one_sentence(tmp_path, field):
    changes = {field: "data\x00/../x"}
    if field == "ingest.dataset_dir":
        changes["ingest.sklearn_dataset"] = None
    result = load_with(tmp_path, changes)
    assert isinstance(result, ConfigError) and "cannot hold a NUL byte" in str(result)


def test_validate_refuses_a_system_dataset_folder_with_exit_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**VALID, "ingest": {"dataset_dir": "/"}}))
    result = subprocess.run([sys.executable, "-m", "trainflow", "validate", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "system folder" in result.stderr


def test_path_inside_refuses_a_symlink_out_of_the_root(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    (state / "checkpoints").symlink_to(outside)
    with pytest.raises(UserFacingError, match=r"leads out of .*state"):
        path_inside(state, "checkpoints", "run")
    assert path_inside(state, "pipeline-runs", "x") == (state / "pipeline-runs" / "x").resolve()


def test_fresh_deletes_nothing_outside_the_state_directory(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "precious"
    (state / "checkpoints").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    config = load_with(tmp_path, {})
    assert isinstance(config, RunConfig)
    (state / "checkpoints" / config.run_name).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserFacingError, match="leads out of"):
        run_locally(config, state, fresh=True)
    assert (outside / "keep.txt").read_text() == "mine"


def test_remove_inside_removes_a_link_not_its_target_and_never_the_root(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (state / "link").symlink_to(outside)
    assert remove_inside(state, state / "link") is True
    assert (outside / "keep.txt").exists() and not (state / "link").exists()
    for target in (state, state / ".." / "outside", tmp_path):
        with pytest.raises(UserFacingError, match="nothing was deleted"):
            remove_inside(state, target)
    assert (outside / "keep.txt").exists() and state.exists()
    (state / "run" / "sub").mkdir(parents=True)
    assert remove_inside(state, state / "run") is True and not (state / "run").exists()


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr"])
def test_the_state_directory_cannot_be_a_system_folder(folder):
    with pytest.raises(UserFacingError, match="is / or a system folder"):
        state_directory(folder)
