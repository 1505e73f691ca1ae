"""Host names and host patterns, normalised the same way on both sides of a match.

A pattern written `API.Example.com.` must match a request for `api.example.com`,
and a Unicode name must match its punycode form, or a rule silently misses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
_SPACE = re.compile(r"\s")


class PatternError(ValueError):
    pass


def normalize_host(host: str) -> str:
    """Lower-case, no trailing dot, punycode for Unicode, IPv6 without brackets."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # left as is; parse_pattern reports invalid names
            host = host.encode("idna").decode("ascii")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return host
    return host


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
