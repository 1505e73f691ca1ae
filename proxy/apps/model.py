"""One vocabulary for both platforms' declarations: host patterns, promises, and where each was written."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.tls.hostnames import to_ascii

PinScope = Literal["any", "leaf", "ca"]
Build = Literal["release", "debug"]


def build_of(chosen: str | None, debuggable: bool) -> Build:
    """`--build` when given, else what the manifest's android:debuggable says."""
    if chosen is not None:
        return "debug" if chosen == "debug" else "release"
    return "debug" if debuggable else "release"


MAX_INPUT = 64 << 20  # the most any single file (APK entry, plist, XML) is read into memory


_HOST = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


def host_name(text: str) -> str | None:
    """A declared domain as tlsgate's host patterns spell it (lower case, punycode), or None if it is no host name."""
    name = text.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = to_ascii(name)
        except UnicodeError:
            return None
    return name if len(name) <= 253 and _HOST.match(name) else None


def short(text: str, limit: int = 80) -> str:
    """What a file says, quoted in a message: bounded, whatever the file put there."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


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
