"""Issue 12: a task's specifics live in its own module under trainflow.tasks, asked for through TaskDefinition.

Outside tasks/ and config/ (a task's config section may name it), no module of shared/trainflow, components or
pipelines holds a registered task's name as a string constant: such a constant is what a branch on the task's
name (`if task == "..."`) or a hand-kept table of tasks is made of. The few that remain are listed below with
why; the list must match what the scan finds exactly, so an entry cannot go stale and a new one cannot slip in.
"""

from __future__ import annotations

import ast
from pathlib import Path

from trainflow.tasks.registry import TASK_MODULES, TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
SCANNED = (ROOT / "shared" / "trainflow", ROOT / "components", ROOT / "pipelines")
EXEMPT = (ROOT / "shared" / "trainflow" / "tasks", ROOT / "shared" / "trainflow" / "config")

# (path relative to the repository, the constant) -> why it may stay
ALLOWED = {
    ("shared/trainflow/demo/docstring_corpus.py", "semi_supervised"):
        "the name of scikit-learn's sklearn.semi_supervised package, whose docstrings the demo corpus reads",
    ("shared/trainflow/models/model_folder.py", "segmentation"):
        "format-1 model folders recorded their task's name instead of the output shape; kept to read them back",
    ("pipelines/text_to_image.py", "text_to_image"):
        "the pipeline of the one task with a score stage: it runs that task, so it names it",
}
NEW_TASKS = ("text_classification", "autoencoder", "semi_supervised")


def _python_files() -> list[Path]:
    return sorted(path for root in SCANNED for path in root.rglob("*.py")
                  if not any(path.is_relative_to(exempt) for exempt in EXEMPT))


def _task_name_constants() -> set[tuple[str, str]]:
    names = set(TASK_NAMES)
    found = set()
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.add((path.relative_to(ROOT).as_posix(), node.value))
    return found


def test_the_scan_reads_every_module_it_should():
    files = {path.relative_to(ROOT).as_posix() for path in _python_files()}
    assert "shared/trainflow/stages/ingest_split.py" in files and "shared/trainflow/data/sources/table.py" in files
    assert not any(name.startswith(("shared/trainflow/tasks/", "shared/trainflow/config/")) for name in files)
    assert len(files) > 100


def test_no_module_outside_tasks_and_config_names_a_task_except_the_listed_ones():
    found = _task_name_constants()
    expected = {entry for entry in ALLOWED if entry[1] in TASK_NAMES}  # adding or removing a task needs no edit here
    assert found - expected == set(), "a module outside trainflow.tasks names a task; ask its TaskDefinition instead"
    assert expected - found == set(), "an allowed entry no longer occurs; remove it from ALLOWED"


def test_the_newest_tasks_are_named_only_by_their_own_modules():
    named = {task for path, task in ALLOWED if path != "shared/trainflow/demo/docstring_corpus.py"}
    assert named.isdisjoint(NEW_TASKS)


def test_only_the_registry_imports_a_task_module():
    # Outside tasks/, the registry (get_task) and the interface (definition) are the way in, never a task's module.
    allowed = {"trainflow.tasks", "trainflow.tasks.registry", "trainflow.tasks.definition"}
    imported = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imported += [(path.relative_to(ROOT).as_posix(), module) for module in modules
                         if module.startswith("trainflow.tasks") and module not in allowed]
    assert imported == []
    assert sorted(TASK_MODULES.values()) == sorted(f"trainflow.tasks.{name}" for name in TASK_NAMES)


# ---------------------------------------------------------------- task-specific config fields
def _declared_task_fields() -> dict[str, str]:
    """'section.field' -> the sentence another task gets, for every field declared with config.task_fields.task_field."""
    from trainflow.config import IngestConfig, ModelConfig, TrainConfig
    from trainflow.config.task_fields import ELSEWHERE

    declared = {}
    for prefix, section in (("ingest", IngestConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for name, info in section.model_fields.items():
            if isinstance(info.json_schema_extra, dict) and ELSEWHERE in info.json_schema_extra:
                declared[f"{prefix}.{name}"] = info.json_schema_extra[ELSEWHERE]
    return declared


def test_every_task_field_is_read_by_a_task_and_every_field_a_task_reads_is_declared():
    from trainflow.tasks import get_task

    declared = _declared_task_fields()
    read = {field for name in TASK_NAMES for field in get_task(name).config_fields}
    assert {"ingest.text_column", "model.text_encoder", "train.autoencoder"} <= set(declared)
    assert read == set(declared)  # no field nobody reads, no field read that another task is not refused


SET_VALUES = {"ingest.text_column": {"text_column": "text"}, "ingest.labelled_fraction": {"labelled_fraction": 0.5},
              "model.text_encoder": {"text_encoder": {}}, "train.autoencoder": {"autoencoder": {}},
              "train.semi_supervised": {"semi_supervised": {}}}


def test_a_task_field_on_a_task_that_does_not_read_it_is_one_sentence_naming_the_field():
    from trainflow.config import IngestConfig, ModelConfig, TrainConfig
    from trainflow.tasks import get_task

    sections = {"ingest": IngestConfig, "model": ModelConfig, "train": TrainConfig}
    checked = 0
    for field, elsewhere in _declared_task_fields().items():
        prefix = field.split(".")[0]
        section = sections[prefix].model_validate({"table": "t.csv", **SET_VALUES[field]} if prefix == "ingest"
                                                  else SET_VALUES[field])
        given = {name: section if name == prefix else None for name in sections}
        for name in TASK_NAMES:
            task = get_task(name)
            if field in task.config_fields:
                task.check_task_fields(**given)  # its own field: no complaint
                continue
            try:
                task.check_task_fields(**given)
            except ValueError as error:
                assert str(error) == f"{field}: {elsewhere.format(task=name)}"
                checked += 1
            else:
                raise AssertionError(f"task {name} accepted {field}, which it does not read")
    assert checked >= len(_declared_task_fields()) * (len(TASK_NAMES) - 1) >= 3


def test_a_cache_format_of_a_tasks_own_is_found_without_an_entry_in_data_cache(tmp_path):
    import h5py
    import pytest

    from trainflow.data.cache.attrs import cache_path, has_cache, read_cache_dataset_hash
    from trainflow.errors import UserFacingError

    assert not has_cache(tmp_path)
    with pytest.raises(UserFacingError, match=r"holds no cache file .*output of the build_cache stage"):
        cache_path(tmp_path)
    with h5py.File(tmp_path / "tokens.h5", "w") as handle:  # text_classification's format, named nowhere in data/
        handle.attrs["dataset_sha256"] = "ab" * 32
    assert has_cache(tmp_path) and cache_path(tmp_path) == tmp_path / "tokens.h5"
    assert read_cache_dataset_hash(tmp_path) == "ab" * 32
    (tmp_path / "other.h5").write_bytes(b"")
    assert not has_cache(tmp_path)  # two unknown files: which one is the cache is not guessed
    h5py.File(tmp_path / "supervised.h5", "w").close()
    assert cache_path(tmp_path) == tmp_path / "supervised.h5"  # a format of trainflow.data.cache comes first
