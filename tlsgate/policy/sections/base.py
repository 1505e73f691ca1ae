"""What a policy section is, and the registry the loader, matcher and schema read.

A section owns one key of the settings (`tls:`, `client:`, ...) or of the top
level (`pin_sets:`): its rules type, its parser, its default and its JSON
Schema fragment live in one module, which registers itself here. The loader
knows no section by name, so adding a check never touches it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import PolicyMessage, Settings


@dataclass
class Context:
    """State one load shares between sections (pin sets named in one file and used in another, say)."""

    shared: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # "defaults" or "rule": what a message calls the block being read

    def table(self, name: str) -> dict[str, Any]:
        return self.shared.setdefault(name, {})


Parser = Callable[[yaml.Node, yn.Reader, Context], Any]
# Runs once every file is read: turns what the parser returned into the final value, adding messages.
Resolver = Callable[[Any, Context, list[PolicyMessage]], Any]
# (the defaults' value, a rule's value) -> what the rule's hosts get.
Merger = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Section[T]:
    """One policy section, whose hosts' values are `T` (`TlsRules`, `Pinning`, ...).

    `parse` returns the validated value, or None after reporting errors at their
    YAML location. `default` is what a host gets when no `defaults:` block sets
    the section (None: absent). `schema` is the JSON Schema of the value and
    `defs` the shared `$defs` it refers to. A `top_level` section is read once
    per file beside `defaults`/`rules` instead of per host. A rule's value
    replaces the defaults' whole unless the section has a `merge`.

    Checks and add-ons read a host's value through the registered object
    (`TLS.of(match.settings)`), never by name: the type checker then knows it
    is a `TlsRules`, and a misspelt name is an import error, not a silent None.
    """

    name: str
    parse: Parser
    schema: dict[str, Any]
    default: T | None = None
    defs: dict[str, Any] = field(default_factory=dict)
    top_level: bool = False
    resolve: Resolver | None = None
    merge: Merger | None = None

    def get(self, settings: Settings) -> T | None:
        """This section's value for one host; None where neither the host's rule nor the defaults set it.

        A section with a default always has a value in a loaded policy; a
        `Settings` built by hand without it gets the default here too.
        """
        value = settings.sections.get(self.name)
        return self.default if value is None else value

    def of(self, settings: Settings) -> T:
        """`get` for a section with a default: every host has a value (LookupError otherwise: a verdict path fails closed)."""
        value = self.get(settings)
        if value is None:
            raise LookupError(f"policy section {self.name!r} is not set for this host and has no default")
        return value


SECTIONS: dict[str, Section[Any]] = {}


def register[T](section: Section[T]) -> Section[T]:
    if section.name in SECTIONS or section.name in ("mode", "name", "hosts", "version", "defaults", "rules", "devices"):
        raise ValueError(f"policy section {section.name!r} is already defined")
    SECTIONS[section.name] = section
    return section


def unregister(name: str) -> None:
    """For tests that add a toy section."""
    SECTIONS.pop(name, None)


def setting_sections() -> list[Section[Any]]:
    return [s for s in SECTIONS.values() if not s.top_level]


def top_sections() -> list[Section[Any]]:
    return [s for s in SECTIONS.values() if s.top_level]


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in setting_sections() if s.default is not None}


def boolean(node: yaml.Node, reader: yn.Reader, what: str) -> bool | None:
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        reader.error(node, f"{what} must be true or false")
        return None
    return value


def choice_section[E: enum.StrEnum](name: str, choices: type[E], default: E, description: str) -> Section[E]:
    """A section whose value is one word of `choices` (`quic: refuse`), registered with its schema."""

    def parse(node: yaml.Node, reader: yn.Reader, context: Context) -> E | None:
        value = yn.choice(node, reader, f"{context.where}.{name}", tuple(choices))
        return choices(value) if value else None

    return register(
        Section(
            name=name,
            parse=parse,
            default=default,
            schema={"$ref": f"#/$defs/{name}"},
            defs={name: {"enum": [str(c) for c in choices], "description": description}},
        )
    )
