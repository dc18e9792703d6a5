"""What every config section shares: strict models, one-line errors naming the field, KFP payloads."""

from __future__ import annotations

import difflib
import os
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from trainflow.errors import ConfigError


class Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def section_payload(section: BaseModel) -> dict[str, Any]:
    """A section as a JSON dict for a KFP parameter.

    KFP parameters cannot hold None, so None values are left out; every
    nullable field defaults to None, so leaving them out loses nothing.
    """
    return section.model_dump(mode="json", exclude_none=True, by_alias=True)


def _describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        key = str(error["loc"][-1])
        hint = difflib.get_close_matches(key, known, n=1)
        if not hint:  # a key that lives one level down, e.g. train.learning_rate -> train.optimizer.learning_rate
            nested = {f"{section}.{name}": name for section in known
                      for name in _known_keys(model, (*error["loc"][:-1], section))}
            close = difflib.get_close_matches(key, list(nested.values()), n=1)
            hint = [path for path, name in nested.items() if close and name == close[0]][:1]
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys here: {', '.join(sorted(known))}"
        return f"{location}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{location}: required field is missing"
    given = error.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    # A whole-section check (no location) already names its field in the message.
    return f"{location}: {message}{shown}" if location else f"{message}{shown}"


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as `X | None` or `dict[str, X]`, else the annotation."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _known_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in parent:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(getattr(current, "model_fields", {}))


def parse_section(model: type[Section], payload: Any, where: str) -> Any:
    """Validate one section (or a whole config); raise ConfigError naming the field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e, model) for e in exc.errors())
        raise ConfigError(f"invalid configuration in {where}: {problems}") from None


def looks_like_local_path(value: str) -> bool:
    """Hub ids look like 'org/name'; anything absolute, dotted or existing is a path."""
    return value.startswith(("/", "./", "../", "~")) or os.path.exists(value)
