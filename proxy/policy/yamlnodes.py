"""YAML read as located nodes, so every complaint can name file, line and column.

PyYAML's composer keeps marks on nodes but its constructor throws them away and
silently lets a duplicated key win; a policy tool cannot afford either.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.policy.model import Location, PolicyMessage


@dataclass
class Reader:
    """Collects messages while sections are read, so one run reports every problem."""

    file: str
    messages: list[PolicyMessage] = field(default_factory=list)

    def loc(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def error(self, node: yaml.Node | Location, message: str) -> None:
        where = node if isinstance(node, Location) else self.loc(node)
        self.messages.append(PolicyMessage(where, message))

    def warn(self, node: yaml.Node | Location, message: str) -> None:
        where = node if isinstance(node, Location) else self.loc(node)
        self.messages.append(PolicyMessage(where, message, warning=True))


_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVED: dict[tuple[str, tuple[bool, bool]], str] = {}


class _FastLoader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """libyaml's parser with scalar tag resolution memoised: policies repeat the same few values thousands of times."""

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_RESOLVED) < 4096:  # bounded: host names are unique and would only fill it
                _RESOLVED[key] = tag
        return tag


_FAST_LOADER = _FastLoader
_STR_TAG = "tag:yaml.org,2002:str"
_constructor = yaml.constructor.SafeConstructor()


def compose(text: str, reader: Reader) -> yaml.Node | None:
    """Parse one YAML document into nodes; syntax errors become located messages.

    libyaml composes a 10,000-rule policy about 4x faster than pure Python and
    keeps the marks; an invalid file is parsed again in pure Python only to
    word the error the same way everywhere.
    """
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        reader.error(Location(reader.file, line, column), f"YAML syntax error: {problem}{context}")
    except yaml.YAMLError as exc:
        reader.error(Location(reader.file, 1, 1), f"YAML error: {exc}")
    return None


def scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, typed the way YAML 1.1 safe loading types it."""
    if node.tag == _STR_TAG:  # most policy values: skip the constructor's machinery
        return node.value
    try:
        return _constructor.construct_object(node, deep=True)
    finally:  # the constructor caches every node it sees; a long-running reloader must not keep them
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def type_name(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar(node)
    if value is None:
        return "empty (null)"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def mapping(node: yaml.Node, reader: Reader, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """Keys to (key node, value node); duplicated and non-string keys are errors."""
    if not isinstance(node, yaml.MappingNode):
        reader.error(node, f"{what} must be a mapping, not {type_name(node)}")
        return None
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str | int):
            reader.error(key_node, f"keys in {what} must be plain names")
            continue
        key = str(key)
        if key in out:
            first = reader.loc(out[key][0])
            reader.error(key_node, f"duplicate key '{key}' in {what} (first at line {first.line})")
            continue
        out[key] = (key_node, value_node)
    return out


def sequence(node: yaml.Node, reader: Reader, what: str) -> list[yaml.Node] | None:
    if not isinstance(node, yaml.SequenceNode):
        reader.error(node, f"{what} must be a list, not {type_name(node)}")
        return None
    return list(node.value)


def string(node: yaml.Node, reader: Reader, what: str) -> str | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value:
        reader.error(node, f"{what} must be a non-empty string, not {type_name(node)}")
        return None
    return value


def choice(node: yaml.Node, reader: Reader, what: str, allowed: tuple[str, ...]) -> str | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if value not in allowed:
        shown = repr(value) if isinstance(node, yaml.ScalarNode) else type_name(node)
        reader.error(node, f"{what} must be one of {', '.join(allowed)}, not {shown}")
        return None
    return value


def strings(node: yaml.Node, reader: Reader, what: str) -> list[tuple[yaml.Node, str]]:
    """A string or a list of strings, each kept with its node for precise messages."""
    if isinstance(node, yaml.ScalarNode):
        value = string(node, reader, what)
        return [(node, value)] if value is not None else []
    items = sequence(node, reader, what)
    if items is None:
        return []
    if not items:
        reader.error(node, f"{what} must not be empty")
    out = []
    for item in items:
        value = string(item, reader, f"each entry of {what}")
        if value is not None:
            out.append((item, value))
    return out


def unknown_keys(entries: dict[str, tuple[yaml.Node, yaml.Node]], allowed: tuple[str, ...], reader: Reader, what: str) -> None:
    """Every key not in `allowed` is an error, with the nearest valid key suggested."""
    for key, (key_node, _) in entries.items():
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(allowed)}"
        reader.error(key_node, f"unknown key '{key}' in {what}{hint}")


def section(
    node: yaml.Node, reader: Reader, name: str, keys: tuple[str, ...], what: str | None = None
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """A policy section's entries, with unknown keys reported: the prologue every section parser shares."""
    entries = mapping(node, reader, what or name)
    if entries is not None:
        unknown_keys(entries, keys, reader, name)
    return entries
