"""`tls:` the protocol versions and cipher suites an upstream server may negotiate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Context, Section, register
from tlsgate.tls import versions
from tlsgate.tls.presets import PRESETS, CipherPolicy, parse_cipher_names

TLS_KEYS = ("min_version", "ciphers")
CIPHER_KEYS = ("preset", "allow", "deny")


@dataclass(frozen=True)
class TlsRules:
    """Minimum protocol version and cipher policy for connections to upstream servers."""

    min_version: str = versions.DEFAULT_MIN
    ciphers: CipherPolicy = CipherPolicy()


def version_text(node: yaml.Node, reader: yn.Reader, what: str) -> str | None:
    """TLS versions as "1.2"; YAML reads an unquoted 1.2 as a float, which users will write."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    text = f"{value:.1f}" if isinstance(value, float) else str(value) if isinstance(value, str | int) else None
    if text not in versions.TLS_VERSIONS:
        reader.error(node, f"{what} must be one of {', '.join(versions.TLS_VERSIONS)}, not {value!r}")
        return None
    return text


def parse_tls(node: yaml.Node, reader: yn.Reader, context: Context) -> TlsRules | None:
    entries = yn.section(node, reader, "tls", TLS_KEYS)
    if entries is None:
        return None
    min_version = versions.DEFAULT_MIN
    if "min_version" in entries:
        min_version = version_text(entries["min_version"][1], reader, "tls.min_version") or min_version
    ciphers = CipherPolicy()
    if "ciphers" in entries:
        ciphers = parse_ciphers(entries["ciphers"][1], reader) or ciphers
    return TlsRules(min_version, ciphers)


def parse_ciphers(node: yaml.Node, reader: yn.Reader) -> CipherPolicy | None:
    if isinstance(node, yaml.ScalarNode):
        name = preset_name(node, reader)
        return CipherPolicy(preset=name) if name else None
    entries = yn.section(node, reader, "tls.ciphers", CIPHER_KEYS, "tls.ciphers (a preset name, or preset/allow/deny)")
    if entries is None:
        return None
    name = preset_name(entries["preset"][1], reader) if "preset" in entries else None
    allow = cipher_codes(entries["allow"][1], reader, "tls.ciphers.allow") if "allow" in entries else frozenset()
    deny = cipher_codes(entries["deny"][1], reader, "tls.ciphers.deny") if "deny" in entries else frozenset()
    return CipherPolicy(preset=name, allow=allow, deny=deny)


def preset_name(node: yaml.Node, reader: yn.Reader) -> str | None:
    return yn.choice(node, reader, "cipher preset", tuple(PRESETS))


def cipher_codes(node: yaml.Node, reader: yn.Reader, what: str) -> frozenset[int]:
    codes: set[int] = set()
    for item, name in yn.strings(node, reader, what):
        found, unknown = parse_cipher_names([name])
        if unknown:
            reader.error(item, f"unknown cipher suite {name!r} in {what}; use an IANA name (TLS_ECDHE_...) or OpenSSL name")
        codes |= found
    return frozenset(codes)


VERSION_DEF: dict[str, Any] = {"enum": [*versions.TLS_VERSIONS, *(float(v) for v in versions.TLS_VERSIONS)]}

TLS = register(
    Section(
        name="tls",
        parse=parse_tls,
        default=TlsRules(),
        schema={
            "type": "object",
            "additionalProperties": False,
            "description": "Upstream protocol and cipher policy.",
            "properties": {
                "min_version": {
                    "$ref": "#/$defs/tls_version",
                    "description": "Lowest TLS version the server may negotiate (default 1.2).",
                },
                "ciphers": {
                    "oneOf": [
                        {"$ref": "#/$defs/preset"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "preset": {"$ref": "#/$defs/preset"},
                                "allow": {"$ref": "#/$defs/suites"},
                                "deny": {"$ref": "#/$defs/suites"},
                            },
                        },
                    ],
                    "description": "A preset, or preset/allow/deny. Without any, every suite but broken ones "
                    "(NULL, EXPORT, anonymous, RC4, DES/3DES) is accepted.",
                },
            },
        },
        defs={
            "tls_version": VERSION_DEF,
            "suites": {
                "type": "array",
                "items": {"type": "string"},
                "description": "IANA (TLS_ECDHE_...) or OpenSSL (ECDHE-...) cipher suite names.",
            },
            "preset": {
                "enum": list(PRESETS),
                "description": "Mozilla Server Side TLS 5.7 modern/intermediate/old, or Apple ATS.",
            },
        },
    )
)
