"""Config fields that only some tasks read, each declared with the sentence another task's config gets.

A field that one task (or a few) reads is declared with `task_field(...)` in its section, next to its
description, with `elsewhere`: what a config of any other task is told when it sets the field
(`{task}` is that task's name). A task lists the fields it reads in `TaskDefinition.config_fields`;
`TaskDefinition.check_task_fields` refuses the others. So adding a task with its own fields touches its
config section and its module, never another task's checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

ELSEWHERE = "trainflow_elsewhere"  # the key in the field's json_schema_extra


def task_field(default: Any, *, elsewhere: str, **kwargs: Any) -> Any:
    """A pydantic Field that only some tasks read; `elsewhere` is the sentence for any other task ({task})."""
    return Field(default, json_schema_extra={ELSEWHERE: elsewhere}, **kwargs)


def set_task_fields(section: BaseModel) -> Iterator[tuple[str, str]]:
    """(field name, sentence for another task) of every task field `section` sets (not None, not empty text)."""
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and ELSEWHERE in extra:
            value = getattr(section, name)
            if value is not None and value != "":
                yield name, str(extra[ELSEWHERE])
