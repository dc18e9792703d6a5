"""What every config section shares: strict models, one-line errors naming the field, KFP payloads."""

from __future__ import annotations

import difflib
import os
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from trainflow.config.yaml_reading import shown_text
from trainflow.errors import ConfigError
from trainflow.redaction import redact_text

# A config with hundreds of mistakes is reported by its first few; the count says how many more.
MAX_PROBLEMS_SHOWN = 10


class Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. NaN and infinity are refused
    # in every float field: no setting means either, and they would fail far from the config (a NaN loss).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def section_payload(section: BaseModel) -> dict[str, Any]:
    """A section as a JSON dict for a KFP parameter.

    KFP parameters cannot hold None, so None values are left out; every
    nullable field defaults to None, so leaving them out loses nothing.
    """
    return section.model_dump(mode="json", exclude_none=True, by_alias=True)


def _location_part(part: Any) -> str:
    text = str(part)
    return text if text.isprintable() and len(text) <= 80 else shown_text(repr(part), 80)


def _describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(_location_part(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        key = str(error["loc"][-1])
        hint = difflib.get_close_matches(key[:100], known, n=1)
        if not hint:  # a key that lives one level down, e.g. train.learning_rate -> train.optimizer.learning_rate
            nested = {f"{section}.{name}": name for section in known
                      for name in _known_keys(model, (*error["loc"][:-1], section))}
            close = difflib.get_close_matches(key[:100], list(nested.values()), n=1)
            hint = [path for path, name in nested.items() if close and name == close[0]][:1]
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys here: {', '.join(sorted(known))}"
        return f"{location}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{location}: required field is missing"
    given = error.get("input")
    # Echoed values are cut and have credentials masked: a message is printed, logged and kept in KFP's records.
    shown = f" (got {shown_text(redact_text(repr(given)), 120)})" if given is not None and not isinstance(given, dict) else ""
    message = shown_text(redact_text(str(error["msg"]).removeprefix("Value error, ")), 500)
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
        errors = exc.errors()
        problems = "; ".join(_describe_error(e, model) for e in errors[:MAX_PROBLEMS_SHOWN])
        more = f"; and {len(errors) - MAX_PROBLEMS_SHOWN} more problems" if len(errors) > MAX_PROBLEMS_SHOWN else ""
        raise ConfigError(f"invalid configuration in {where}: {problems}{more}") from None


def looks_like_local_path(value: str) -> bool:
    """Hub ids look like 'org/name'; anything absolute, dotted or existing is a path."""
    return value.startswith(("/", "./", "../", "~")) or os.path.exists(value)
