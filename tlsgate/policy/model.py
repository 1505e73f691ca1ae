"""The policy as data: what the loader produces and the matcher and addons read.

Everything here is immutable so that a hot reload can swap one whole policy for
another atomically: a hook that picked up the old policy finishes with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Location:
    """Where something was written, so every verdict can point at its source line."""

    file: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @property
    def rule_ref(self) -> str:
        """`file:line`, the form block pages and findings use."""
        return f"{self.file}:{self.line}"


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    REPORT = "report"


@dataclass(frozen=True)
class Settings:
    """The effective settings for one host after defaults and the matching rule merge.

    `mode` is the one setting every check shares; everything else is a section
    (cleartext, tls, certificates, pins, client, ...) kept as the validated
    object its section module parsed, keyed by section name, so adding a check
    never changes this class's shape.
    """

    mode: Mode = Mode.ENFORCE
    sections: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def get(self, section: str, default: Any = None) -> Any:
        return self.sections.get(section, default)


@dataclass(frozen=True)
class HostPattern:
    """`api.example.com` (exactly that name) or `*.example.com` (every subdomain, any depth, not the apex)."""

    text: str
    wildcard: bool
    base: str  # the name without `*.`
    location: Location


@dataclass(frozen=True)
class Rule:
    hosts: tuple[HostPattern, ...]
    overrides: dict[str, Any]  # only the keys the rule sets: `mode` and sections
    location: Location
    name: str | None = None


@dataclass(frozen=True)
class Match:
    """The answer to "which settings apply to this host, and who said so"."""

    host: str
    settings: Settings
    rule: Rule | None
    pattern: HostPattern | None
    source: Location  # the rule, or the `defaults` block when no rule matched

    @property
    def rule_ref(self) -> str:
        return self.source.rule_ref


@dataclass(frozen=True)
class DeviceProbes:
    """A device's own probe settings, from a `devices:` entry written as a mapping.

    They belong to the device's name, so every address that carries the name
    (its IPv4 and IPv6, a WireGuard peer of that name) shares them. `probes`
    None leaves the rules' lists in force; a tuple replaces them on every host
    intercepted for the device (empty: a control device, never probed).
    `probe_fraction` None leaves the rules' fractions in force.
    """

    name: str
    location: Location  # the `devices:` entry that says so, for findings to point at
    probes: tuple[str, ...] | None = None
    probe_fraction: float | None = None


@dataclass(frozen=True)
class Policy:
    defaults: Settings
    defaults_location: Location
    rules: tuple[Rule, ...]
    devices: dict[str, str]  # client address -> device name
    files: tuple[str, ...]
    warnings: tuple[PolicyMessage, ...] = ()
    index: Any = field(default=None, compare=False, repr=False)  # matcher.HostIndex
    device_index: Any = field(default=None, compare=False, repr=False)  # matcher.DeviceIndex
    device_probes: dict[str, DeviceProbes] = field(default_factory=dict)  # device name -> its own probe settings

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    def match(self, host: str) -> Match:
        return self.index.match(host)

    def device_for(self, address: str) -> str | None:
        return self.device_index.name_for(address)

    def probes_of(self, device: str | None) -> DeviceProbes | None:
        """The device's own probe settings; None for a device without any (or not named by the policy)."""
        return self.device_probes.get(device) if device else None


@dataclass(frozen=True, order=True)
class PolicyMessage:
    """One error or warning, printed as `file:line:column: message`."""

    location: Location
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return escape_unprintable(f"{self.location}: {kind}{self.message}")


def escape_unprintable(text: str) -> str:
    """Messages quote what the file says: a newline, control character or lone surrogate in a key must not
    forge a log line or crash the UTF-8 console writer, so each is shown as its escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


class PolicyError(Exception):
    """A policy that must not be put in force; carries every problem found, not only the first."""

    def __init__(self, messages: list[PolicyMessage]) -> None:
        self.messages = sorted(m for m in messages if not m.warning)
        self.warnings = sorted(m for m in messages if m.warning)
        super().__init__("\n".join(str(m) for m in self.messages))
