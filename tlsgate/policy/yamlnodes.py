"""YAML read as located nodes, so every complaint can name file, line and column.

PyYAML's composer keeps marks on nodes but its constructor throws them away and
silently lets a duplicated key win; a policy tool cannot afford either.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from tlsgate.policy.model import Location, PolicyMessage


@dataclass
class Reader:
    """Collects messages while sections are read, so one run reports every problem."""

    file: str
    messages: list[PolicyMessage] = field(default_factory=list)

    def loc(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def error(self, node: yaml.Node | Location, message: str) -> None:
        if isinstance(node, yaml.Node) and node.tag == INVALID_TAG:
            return  # already reported where it was found; a second "must be a string" would only be noise
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

# Bounds checked before composing: libyaml's composer recurses in C, so a 30,000-deep document is a
# segfault (not even a traceback), and a policy is a few levels deep (rules -> rule -> section -> list).
MAX_DEPTH = 64
MAX_BYTES = 32 * 1024 * 1024
INVALID_TAG = "tag:tlsgate,invalid"  # a node already reported; later checks stay quiet about it
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp"))
_COLLECTION_TAGS = frozenset(("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"))
_LINE_PREFIX = re.compile(r"^[ \t?-]*", re.MULTILINE)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ALLOWED_CONTROLS = frozenset("\t\n\r")


class Invalid:
    """What `scalar()` returns for a value that was already reported (bad date, unknown tag, ...)."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = Invalid()


def compose(text: str, reader: Reader) -> yaml.Node | None:
    """Parse one YAML document into nodes; every problem becomes a located message, never an exception.

    libyaml composes a 10,000-rule policy about 4x faster than pure Python and
    keeps the marks; an invalid file is parsed again in pure Python only to
    word the error the same way everywhere. Size and nesting are bounded first
    and every node is vetted after, so what the section parsers see is plain
    data: strings, numbers, dates, lists and mappings, no aliases.
    """
    if len(text) > MAX_BYTES:
        reader.error(Location(reader.file, 1, 1), f"policy file is larger than {MAX_BYTES // (1024 * 1024)} MiB")
        return None
    if not text.isascii():
        surrogate = re.search("[\ud800-\udfff]", text)
        if surrogate:  # libyaml only takes UTF-8, which cannot carry one
            reader.error(_position(text, reader.file, surrogate.start()), "text contains an unpaired surrogate")
            return None
    if not _shallow(text, reader):
        return None
    root = _compose_located(text, reader)
    if root is not None:
        _vet(root, reader)
    return root


def _compose_located(text: str, reader: Reader) -> yaml.Node | None:
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
    except yaml.reader.ReaderError as exc:  # a NUL or control character: it has a position, not a mark
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        reader.error(_position(text, reader.file, exc.position), f"YAML error: {exc.reason}: U+{code:04X}")
    except yaml.YAMLError as exc:
        reader.error(Location(reader.file, 1, 1), f"YAML error: {exc}")
    return None


def _position(text: str, file: str, index: int) -> Location:
    before = text[:index]
    line = before.count("\n") + 1
    return Location(file, line, index - (before.rfind("\n") + 1) + 1)


def _shallow(text: str, reader: Reader) -> bool:
    """False (with a located error) when the document nests deeper than MAX_DEPTH.

    Block nesting costs columns of indentation (or a `- `/`? ` indicator) on
    some line, and flow nesting costs an unclosed bracket, so a cheap bound
    from the text clears ordinary policies; only a suspicious text pays for an
    exact scan of libyaml's events, which are produced without recursion.
    """
    block = max((len(m) for m in _LINE_PREFIX.findall(text)), default=0)
    brackets = _NOT_BRACKET.sub("", text)
    flow = max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)
    if 2 * (block + 1) + flow <= MAX_DEPTH:
        return True
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_BASE_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    # PyYAML's parser gives every event it emits a start mark; only hand-built events lack one.
                    assert mark is not None
                    reader.error(
                        Location(reader.file, mark.line + 1, mark.column + 1),
                        f"nested more than {MAX_DEPTH} levels deep; a policy needs a handful",
                    )
                    return False
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return True  # not deep so far; composing words the syntax error
    return True


def _vet(root: yaml.Node, reader: Reader) -> None:
    """Report, once and where written, every value the section parsers must not see.

    Aliases are refused because a few lines of them expand into billions of
    nodes for any walker (pin_sets are the policy's own way to reuse). Tags
    beyond YAML's plain types would reach constructors for Python objects or
    merge keys. Values that do not construct (2027-06-31, a 5,000-digit number)
    and text with control characters or lone surrogates are reported here, and
    their nodes are marked so no later check trips over them.
    """
    seen: set[int] = set()
    stack = [root]
    budget = 10_000_000  # nodes; far above any real policy, bounds a pathological one
    while stack and budget:
        budget -= 1
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            _vet_scalar(node, reader)
            continue
        if id(node) in seen:
            reader.error(node, "YAML anchors and aliases (&name, *name) are not supported; use pin_sets to share pins")
            continue
        seen.add(id(node))
        if node.tag not in _COLLECTION_TAGS:
            reader.error(node, f"YAML tag '{node.tag}' is not supported in policies")
            node.tag = INVALID_TAG
            continue
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(value)
                if isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG and not key.value.isprintable():
                    reader.error(key, "keys are names: no control characters, line breaks or unpaired surrogates")
                    key.tag = INVALID_TAG
                else:
                    stack.append(key)
        else:
            stack.extend(node.value)


def _vet_scalar(node: yaml.ScalarNode, reader: Reader) -> None:
    if node.tag == INVALID_TAG:
        return  # an alias of an already reported scalar
    if node.tag == _STR_TAG:
        if node.value.isprintable() or all(c.isprintable() or c in _ALLOWED_CONTROLS for c in node.value):
            return
        reader.error(node, "text contains control characters or unpaired surrogates")
        node.tag = INVALID_TAG
        return
    if node.tag not in _SCALAR_TAGS:
        tag = node.tag.removeprefix("tag:yaml.org,2002:")
        shown = "merge keys (<<)" if tag == "merge" else f"tag '!!{tag}'"
        reader.error(node, f"YAML {shown} not supported in policies")
        node.tag = INVALID_TAG
        return
    try:
        _construct(node)
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a located policy error
        reader.error(node, f"invalid value {node.value[:40]!r}: {str(exc).splitlines()[0][:120]}")
        node.tag = INVALID_TAG


def _construct(node: yaml.Node) -> Any:
    try:
        return _constructor.construct_object(node, deep=True)
    finally:  # the constructor caches every node it sees; a long-running reloader must not keep them
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, typed the way YAML 1.1 safe loading types it."""
    if node.tag == _STR_TAG:  # most policy values: skip the constructor's machinery
        return node.value
    if node.tag == INVALID_TAG:
        return INVALID
    return _construct(node)


def type_name(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar(node)
    if value is None:
        return "empty (null)"
    if value is INVALID:
        return "an invalid value"
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
