"""`client:` what tlsgate expects of the apps themselves, and which invalid certificates it tries them with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.policy.sections.tls import version_text
from tlsgate.tls import versions
from tlsgate.tls.probes import PROBE_KINDS

CLIENT_KEYS = ("min_version", "weak_suites", "require_sni", "probes")
WEAK_SUITE_CHOICES = ("report", "strict", "ignore")


@dataclass(frozen=True)
class ClientRules:
    """`min_version` judges the best version a client offers (enforce: refuse the
    handshake; report: record it). `weak_suites`: `report` records broken suites
    offered, or a client offering nothing but weak ones; `strict` also records
    weak suites offered next to strong ones; `ignore` records nothing.
    `probes` is empty by default: presenting bad certificates is opt-in.
    """

    min_version: str = versions.DEFAULT_MIN
    weak_suites: str = "report"
    require_sni: bool = True
    probes: tuple[str, ...] = ()


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
            },
        },
    )
)
