"""Host names and host patterns, normalised the same way on both sides of a match.

A pattern written `API.Example.com.` must match a request for `api.example.com`,
and a Unicode name must match its punycode form, or a rule silently misses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tlsgate.tls.hostnames import to_ascii

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
_SPACE = re.compile(r"\s")
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")  # what a Host header must look like to name a URL


class PatternError(ValueError):
    pass


def is_address(host: str) -> bool:
    """An IP address literal (brackets allowed), as opposed to a name.

    Asked several times per request, mostly of names: an IPv4 literal ends in a
    digit and an IPv6 one has a colon, so a name is told apart without raising
    (ipaddress's ValueError cost 3% of the proxy's CPU under load).
    """
    host = host.strip("[]")
    if ":" not in host and not host[-1:].isdigit():
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalize_host(host: str) -> str:
    """Lower-case, no trailing dot, punycode for Unicode (IDNA 2008, as devices encode it), IPv6 without brackets."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # left as is; parse_pattern reports invalid names
            host = to_ascii(host)
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return host
    return host


def split_host_port(authority: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, a bare IPv6 address or a bare name -> (host, port or None).

    The one splitter: SNI (some clients send `host:port`), Host headers, CONNECT
    authorities and `--resolve` specs all pass through here, because rules match
    host names on every port.
    """
    text = authority.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isascii() and port.isdigit() and 0 < int(port) < 65536 else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    return text, None


def host_only(authority: str) -> str:
    """The normalised host of an authority, port dropped."""
    return normalize_host(split_host_port(authority)[0])


@dataclass(frozen=True)
class RequestName:
    """The host and URL of a request as the app asked for them: one fact, decided in one place."""

    host: str  # `ConnState.name_of` may still turn a bare address into the name tlsgate's DNS gave for it
    url: str


def name_request(scheme: str, host: str, port: int, path: str, url: str, host_header: str | None) -> RequestName:
    """Name a request from what mitmproxy read off the wire (`url` is mitmproxy's own, from the target it connects to).

    A name the proxy itself connects to (the proxy-form URL's, the CONNECT or
    SOCKS authority) is where the request goes, so it wins over a Host header
    that could say anything. In transparent and WireGuard modes the target is
    only an address and the Host header is the one name there is; it names the
    URL too, unless it is no host name (then the address is the honest URL).
    """
    if not is_address(host):
        return RequestName(host, url)
    name = split_host_port(host_header)[0] if host_header else host
    if is_address(name) or not _HOST_NAME.fullmatch(name):
        return RequestName(name, url)
    authority = name if port == {"http": 80, "https": 443}.get(scheme) else f"{name}:{port}"
    return RequestName(name, f"{scheme}://{authority}{path}")


def parse_pattern(text: str) -> tuple[str, bool]:
    """Return (base name, is wildcard) or raise PatternError saying how to write it instead."""
    raw = text.strip()
    if raw != text or _SPACE.search(raw):
        raise PatternError(f"host pattern {text!r} contains white space")
    if "://" in raw:
        raise PatternError(f"host pattern {text!r} has a scheme; write the host name only, e.g. 'api.example.com'")
    if "/" in raw:
        raise PatternError(f"host pattern {text!r} has a path or prefix length; write a host name or a single IP address")
    if raw == "*":
        raise PatternError("'*' alone is not a host pattern; put settings for every host under 'defaults'")
    wildcard = raw.startswith("*.")
    body = raw[2:] if wildcard else raw
    if "*" in body:
        raise PatternError(f"host pattern {text!r}: '*' may only stand as the whole first label, as in '*.example.com'")
    ip = _ip(body)
    if ip is not None:
        if wildcard:
            raise PatternError(f"host pattern {text!r}: an IP address cannot take a wildcard")
        return ip, False
    if ":" in body:
        raise PatternError(f"host pattern {text!r} has a port; rules match host names on every port")
    name = normalize_host(body)
    if not name.isascii():
        raise PatternError(f"host pattern {text!r} is not a valid internationalised name")
    if len(name) > 253:
        raise PatternError(f"host pattern {text!r} is longer than 253 characters")
    if _NAME.match(name):
        return name, wildcard
    for label in name.split("."):  # only to say which label is wrong
        if not _LABEL.match(label):
            raise PatternError(
                f"host pattern {text!r} has an invalid label {label!r}: labels are 1-63 letters, digits, '-' or '_', "
                "not starting or ending with '-'"
            )
    return name, wildcard


def _ip(text: str) -> str | None:
    if not text or not (text[0].isdigit() or text[0] == "[" or ":" in text):
        return None  # a host name: skip the (slow) ipaddress parse
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def parse_resolve(spec: str) -> tuple[str, int | None, str]:
    """`HOST:PORT:ADDRESS` (PORT may be `*`; an IPv6 ADDRESS in brackets) -> (host, port or None, address)."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{spec!r} is not HOST:PORT:ADDRESS (e.g. api.example.com:443:127.0.0.1)")
    host, port_text, address = parts
    port = None if port_text == "*" else int(port_text) if port_text.isdigit() else -1
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{spec!r}: port must be 1-65535 or '*'")
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"{spec!r}: {address!r} is not an IP address") from None
    return normalize_host(host), port, bare


class Redirects:
    """`--resolve` as a table: (host, port or None for any) -> the address to connect to instead.

    One object, shared: the `Resolve` add-on fills it from its option, and
    `DestinationGuard` asks it whether the operator chose an address, without
    either add-on knowing the other.
    """

    def __init__(self) -> None:
        self.table: dict[tuple[str, int | None], str] = {}

    def load(self, specs: Iterable[str]) -> None:
        """Replace the table with `specs` (`HOST:PORT:ADDRESS` each); ValueError names the bad one, and the
        table stays as it was."""
        table = {}
        for spec in specs:
            host, port, address = parse_resolve(spec)
            table[(host, port)] = address
        self.table = table

    def mapped(self, name: str, port: int | None) -> str | None:
        """The address `--resolve` gives this name and port, if any."""
        return self.table.get((name, port)) or self.table.get((name, None)) if self.table else None
