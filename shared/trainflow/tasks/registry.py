"""The one table of tasks: a name in a run config -> the module that defines it.

Adding a task is one module under trainflow.tasks (with a module-level `TASK`, an instance of a
`TaskDefinition` subclass) and one line here. Modules are imported on first use, so reading a
config never imports diffusers for a classifier.
"""

from __future__ import annotations

import difflib
import importlib
from functools import lru_cache

from trainflow.errors import ConfigError
from trainflow.tasks.definition import TaskDefinition

TASK_MODULES: dict[str, str] = {
    "text_to_image": "trainflow.tasks.text_to_image",
    "classification": "trainflow.tasks.classification",
    "regression": "trainflow.tasks.regression",
    "segmentation": "trainflow.tasks.segmentation",
    "text_classification": "trainflow.tasks.text_classification",
    "autoencoder": "trainflow.tasks.autoencoder",
    "semi_supervised": "trainflow.tasks.semi_supervised",
}
TASK_NAMES = tuple(TASK_MODULES)


def unknown_task_message(name: object) -> str:
    close = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown task {str(name)[:80]!r}; {hint}trainflow knows {', '.join(TASK_NAMES)}"


@lru_cache(maxsize=None)
def get_task(name: str) -> TaskDefinition:
    """The definition of task `name`; ConfigError (naming the known tasks) for a name the table does not have."""
    module = TASK_MODULES.get(name) if isinstance(name, str) else None
    if module is None:
        raise ConfigError(f"task: {unknown_task_message(name)}")
    definition = importlib.import_module(module).TASK
    assert definition.name == name, f"{module}.TASK is named {definition.name!r}, registered as {name!r}"
    return definition
