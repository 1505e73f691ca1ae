"""One vocabulary for both platforms' declarations: host patterns, promises, and where each was written."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tlsgate.tls.hostnames import to_ascii

PinScope = Literal["any", "leaf", "ca"]
Build = Literal["release", "debug"]


def build_of(chosen: str | None, debuggable: bool) -> Build:
    """`--build` when given, else what the manifest's android:debuggable says."""
    if chosen is not None:
        return "debug" if chosen == "debug" else "release"
    return "debug" if debuggable else "release"


MAX_INPUT = 64 << 20  # the most any single file (APK entry, plist, XML) is read into memory
MAX_DOMAINS = 10_000  # host patterns one import writes; real configs name tens, the policy stays far below 32 MiB
MAX_WARNINGS = 1_000  # kept and printed; the rest are counted
MAX_NAME = 1_024  # a declared domain longer than this is no host name, refused before IDNA (whose punycode is quadratic)


_HOST = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
_APP_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")


def host_name(text: str) -> str | None:
    """A declared domain as tlsgate's host patterns spell it (lower case, punycode), or None if it is no host name."""
    name = text.strip()
    if len(name) > MAX_NAME:
        return None
    name = name.rstrip(".").lower()
    if not name.isascii():
        try:
            name = to_ascii(name)
        except UnicodeError:
            return None
    return name if len(name) <= 253 and _HOST.fullmatch(name) else None


def host_patterns(name: str, include_subdomains: bool) -> list[str]:
    """The patterns a declared name (from host_name) stands for; an IP address has no subdomains to include."""
    if include_subdomains and not _is_address(name):
        return [name, f"*.{name}"]
    return [name]


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def app_identifier(text: object) -> str | None:
    """A package name or bundle identifier fit to name the app in a policy, or None (the caller warns)."""
    return text if isinstance(text, str) and _APP_ID.fullmatch(text) else None


def short(text: str, limit: int = 80) -> str:
    """What a file says, quoted in a message: bounded, whatever the file put there."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def clip(text: str, limit: int = 64) -> str:
    """A name from a file (an element's tag, an entry's name) shown in a message or origin: bounded, unquoted."""
    return text if len(text) <= limit else text[:limit] + "..."


def printable(text: str) -> str:
    """A message for a terminal: control, format (bidi) and surrogate characters escaped, whatever a file put there."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else f"\\u{ord(c):04x}" if ord(c) > 0xFF else f"\\x{ord(c):02x}" for c in text
    )


class AppFormatError(ValueError):
    """A file that cannot be read as what it claims to be; the message says which and why."""


@dataclass(frozen=True)
class Origin:
    """Where the app declares something: its file, the line when the format has lines, and the element."""

    file: str
    line: int | None
    element: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.element}" if self.line else f"{self.file} {self.element}"


@dataclass(frozen=True)
class Warning_:
    """Something the app declares that tlsgate cannot hold it to (or that looks wrong): never dropped silently."""

    origin: Origin
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class PinDeclaration:
    """An Android `<pin-set>` (any pin, any certificate) or an ATS NSPinnedDomains entry (leaf and/or CA pins)."""

    pins: list[str]  # sha256/<base64>
    scopes: list[PinScope]
    origin: Origin
    expires: dt.date | None = None
    pin_origins: list[Origin] = field(default_factory=list)


@dataclass
class Declared:
    """The effective declaration for some host patterns (none: the app's default for every other host).

    `values` maps a promise (cleartext, min_version, forward_secrecy, user_cas,
    must_pin) to its value and the element it comes from, inheritance resolved.
    """

    hosts: list[str]
    origin: Origin
    values: dict[str, tuple[Any, Origin]] = field(default_factory=dict)
    pins: PinDeclaration | None = None
    notes: list[str] = field(default_factory=list)
    host_origins: list[Origin] = field(default_factory=list)  # the elements naming the hosts


@dataclass
class AppConfig:
    platform: Literal["android", "ios"]
    app_id: str
    build: Build
    files: list[str]
    base: Declared
    domains: list[Declared] = field(default_factory=list)
    warnings: list[Warning_] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # one-line summaries for the policy's header
