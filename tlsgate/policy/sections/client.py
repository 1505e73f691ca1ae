"""`client:` what tlsgate expects of the apps themselves, and which invalid certificates it tries them with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.policy.sections.tls import version_text
from tlsgate.tls import versions
from tlsgate.tls.probes import PROBE_KINDS

CLIENT_KEYS = ("min_version", "weak_suites", "require_sni", "probes", "probe_fraction")
WEAK_SUITE_CHOICES = ("report", "strict", "ignore")


@dataclass(frozen=True)
class ClientRules:
    """`min_version` judges the best version a client offers (enforce: refuse the
    handshake; report: record it). `weak_suites`: `report` records broken suites
    offered, or a client offering nothing but weak ones; `strict` also records
    weak suites offered next to strong ones; `ignore` records nothing.
    `probes` is empty by default: presenting bad certificates is opt-in.
    `probe_fraction` is the share of a device's probe-eligible connections that
    get the next untried kind (1: every one, as before; 0.1: every tenth).
    """

    min_version: str = versions.DEFAULT_MIN
    weak_suites: str = "report"
    require_sni: bool = True
    probes: tuple[str, ...] = ()
    probe_fraction: float = 1.0


def parse_client(node: yaml.Node, reader: yn.Reader, context: Context) -> ClientRules | None:
    entries = yn.section(node, reader, "client", CLIENT_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    if "min_version" in entries:
        values["min_version"] = version_text(entries["min_version"][1], reader, "client.min_version")
    if "weak_suites" in entries:
        values["weak_suites"] = yn.choice(entries["weak_suites"][1], reader, "client.weak_suites", WEAK_SUITE_CHOICES)
    if "require_sni" in entries:
        values["require_sni"] = boolean(entries["require_sni"][1], reader, "client.require_sni")
    if "probes" in entries:
        values["probes"] = parse_probes(entries["probes"][1], reader)
    if "probe_fraction" in entries:
        values["probe_fraction"] = parse_fraction(entries["probe_fraction"][1], reader)
    return ClientRules(**{k: v for k, v in values.items() if v is not None})


def parse_probes(node: yaml.Node, reader: yn.Reader) -> tuple[str, ...] | None:
    """A list of probe kinds, tried in the order written; `[]` turns probing off for a rule."""
    items = yn.sequence(node, reader, f"client.probes (a list of: {', '.join(PROBE_KINDS)})")
    if items is None:
        return None
    kinds: list[str] = []
    for item in items:
        kind = yn.choice(item, reader, "each entry of client.probes", PROBE_KINDS)
        if kind is None:
            continue
        if kind in kinds:
            reader.error(item, f"probe '{kind}' is listed twice in client.probes; each kind is tried once")
            continue
        kinds.append(kind)
    return tuple(kinds)


def parse_fraction(node: yaml.Node, reader: yn.Reader) -> float | None:
    """A number in (0, 1]: 0 would mean "never", which is `probes: []`, said in one way only."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
        said = repr(value) if isinstance(value, int | float) and not isinstance(value, bool) else yn.type_name(node)
        reader.error(
            node,
            f"client.probe_fraction must be a number above 0 and at most 1 (0.1: every tenth connection), not {said}; "
            "to turn probing off write probes: []",
        )
        return None
    return float(value)


CLIENT = register(
    Section(
        name="client",
        parse=parse_client,
        default=ClientRules(),
        schema={
            "type": "object",
            "additionalProperties": False,
            "description": "Client audits: what the app's ClientHello must offer, and which invalid certificates to probe "
            "it with. A rule's client section replaces the default's whole.",
            "properties": {
                "min_version": {
                    "$ref": "#/$defs/tls_version",
                    "description": "Lowest best-offered TLS version (default 1.2). enforce: the handshake is refused; "
                    "report: recorded.",
                },
                "weak_suites": {
                    "enum": list(WEAK_SUITE_CHOICES),
                    "default": "report",
                    "description": "report: record broken suites offered, or a client offering only weak ones; strict: "
                    "also weak suites offered next to strong ones; ignore: record nothing.",
                },
                "require_sni": {
                    "type": "boolean",
                    "default": True,
                    "description": "Record a ClientHello without SNI for a host name (never for an IP address).",
                },
                "probes": {
                    "type": "array",
                    "uniqueItems": True,
                    "default": [],
                    "items": {"enum": list(PROBE_KINDS)},
                    "description": "Invalid certificates to present, each once per (client address, host), in this "
                    "order (a kind that does not apply to the host is skipped: the wildcard kinds for an IP address, "
                    "ip_name_only for a name); then connections are intercepted normally. Empty: no probing. "
                    "tls_downgrade, weak_cipher and anon_cipher present tlsgate's own certificate with only TLS 1.0/1.1, "
                    "RSA-CBC-SHA1 or anonymous suites on offer.",
                },
                "probe_fraction": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1,
                    "default": 1,
                    "description": "Share of a device's connections that may be probed get the next untried kind, "
                    "counted per device and rule (0.25: every fourth, the others are served normally in between); 1: every one.",
                },
            },
        },
    )
)
