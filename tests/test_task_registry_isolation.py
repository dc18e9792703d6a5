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
    # Known debt, older than the task registry: the stage functions' `task` default and the fallback for a
    # config without a task. Removing them changes the compiled pipelines' component signatures.
    ("shared/trainflow/kubeflow/pipeline_package.py", "text_to_image"): "default task of a config without one",
    ("shared/trainflow/stages/build_cache.py", "text_to_image"): "default of the stage's `task` argument",
    ("shared/trainflow/stages/evaluate.py", "text_to_image"): "default of the stage's `task` argument",
    ("shared/trainflow/stages/ingest_split.py", "text_to_image"): "default of the stage's `task` argument",
    ("shared/trainflow/stages/register_model.py", "text_to_image"): "default of the stage's `task` argument",
    ("components/register_model/component.py", "text_to_image"): "default of the component's `task` input",
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
    assert found - set(ALLOWED) == set(), "a module outside trainflow.tasks names a task; ask its TaskDefinition instead"
    assert set(ALLOWED) - found == set(), "an allowed entry no longer occurs; remove it from ALLOWED"


def test_the_newest_tasks_are_named_only_by_their_own_modules():
    assert not [entry for entry in ALLOWED if entry[1] in NEW_TASKS and entry[0] != "shared/trainflow/demo/docstring_corpus.py"]
    assert set(NEW_TASKS) <= set(TASK_NAMES)


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
