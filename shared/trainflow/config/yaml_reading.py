"""Reading a run YAML safely: bounded size, UTF-8 only, no aliases, no duplicate keys, bounded nesting.

A run config is a few kilobytes written by a person, so anything far from that is refused with one
sentence before it can cost time or memory:
- files over MAX_CONFIG_BYTES (1 MiB) are refused unread;
- aliases (`*name`) are refused: an alias bomb (a few lines of nested aliases) expands into billions
  of nodes, and a run config has no use for them; refusing them at the composer costs nothing, where
  bounding an expansion would still build part of it;
- a key given twice in one mapping is an error naming the key and both lines (PyYAML silently keeps the last);
- nesting deeper than MAX_NESTING is refused (PyYAML's composer recurses, so a file of '[' would
  otherwise end in RecursionError).
The loader is a subclass of yaml.SafeLoader (the pure-Python one, because the C loader's composer
cannot be hooked), so only plain YAML types are built, as with yaml.safe_load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainflow.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
MAX_NESTING = 64


def _line(node_or_event: Any) -> int:
    return node_or_event.start_mark.line + 1


class RunConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases, duplicate keys and deep nesting (see the module docstring)."""

    def __init__(self, stream: str, where: str):
        super().__init__(stream)
        self.where, self.depth = where, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{self.where}, line {_line(event)}: YAML aliases (*{shown_text(event.anchor, 40)}) "
                              "are not allowed in a run config; write the value out where it is used")
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ConfigError(f"{self.where}, line {_line(self.peek_event())}: values are nested more than "
                                  f"{MAX_NESTING} levels deep; a run config needs a few")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key; SafeLoader says so below
                    continue
                if first is not None:
                    raise ConfigError(f"{self.where}: key {shown_text(str(key), 80)!r} is given twice in one "
                                      f"mapping (lines {first} and {_line(key_node)}); keep one")
                seen[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)


def shown_text(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters with its full length stated when longer."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}... ({len(text)} characters)"


def read_config_mapping(path: Path) -> dict[Any, Any]:
    """The run YAML at `path` as a dict; ConfigError (one sentence) for anything that is not a small UTF-8 YAML mapping."""
    where = f"config file {shown_text(str(path), 300)}"
    try:
        if not path.is_file():
            raise ConfigError(f"{where} does not exist or is not a regular file; pass the path of a run YAML "
                              "(see pipelines/configs/)")
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"{where} cannot be read: {shown_text(str(exc))}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a run config is a few kilobytes "
                          "of YAML, so this is not one")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    loader = None
    try:
        loader = RunConfigLoader(text, where)  # its reader already refuses control characters
        raw = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML: {shown_text(str(exc.problem or exc.context))}{at}") from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: e.g. a date such as 2024-13-01
        raise ConfigError(f"{where} is not valid YAML: {shown_text(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of sections, got {type(raw).__name__}")
    return raw
