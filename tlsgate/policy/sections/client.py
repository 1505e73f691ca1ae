"""`client:` what tlsgate expects of the apps themselves, and which invalid certificates it tries them with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import DeviceProbes, Location, Match
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.policy.sections.tls import version_text
from tlsgate.tls import versions
from tlsgate.tls.probes import PROBE_KINDS

CLIENT_KEYS = ("min_version", "weak_suites", "require_sni", "probes", "probe_fraction")
# What a `devices:` entry written as a mapping may say: the name, and the device's own probe settings.
DEVICE_KEYS = ("name", "probes", "probe_fraction")
ALL_PROBES = "all"  # `probes: all` on a device: every kind tlsgate has, in PROBE_KINDS order
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
    # `probes: []` was written: in a rule, its hosts are never probed, not even for a device with its own list.
    probes_off: bool = False


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
        values["probes_off"] = values["probes"] == ()
    if "probe_fraction" in entries:
        values["probe_fraction"] = parse_fraction(entries["probe_fraction"][1], reader)
    return ClientRules(**{k: v for k, v in values.items() if v is not None})


def parse_probes(node: yaml.Node, reader: yn.Reader, what: str = "client.probes") -> tuple[str, ...] | None:
    """A list of probe kinds, tried in the order written; `[]` turns probing off for a rule."""
    items = yn.sequence(node, reader, f"{what} (a list of: {', '.join(PROBE_KINDS)})")
    if items is None:
        return None
    if len(items) > len(PROBE_KINDS):  # one message, not one per surplus entry of a huge list
        reader.error(
            node, f"{what} lists {len(items)} entries, but there are {len(PROBE_KINDS)} probe kinds and each is listed once"
        )
        return None
    kinds: list[str] = []
    for item in items:
        kind = yn.choice(item, reader, f"each entry of {what}", PROBE_KINDS)
        if kind is None:
            continue
        if kind in kinds:
            reader.error(item, f"probe '{kind}' is listed twice in {what}; each kind is tried once")
            continue
        kinds.append(kind)
    return tuple(kinds)


def parse_fraction(node: yaml.Node, reader: yn.Reader, what: str = "client.probe_fraction") -> float | None:
    """A number in (0, 1]: 0 would mean "never", which is `probes: []`, said in one way only."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
        said = repr(value) if isinstance(value, int | float) and not isinstance(value, bool) else yn.type_name(node)
        reader.error(
            node,
            f"{what} must be a number above 0 and at most 1 (0.1: every tenth connection), not {said}; "
            "to turn probing off write probes: []",
        )
        return None
    return float(value)


def parse_device_probes(
    entries: dict[str, tuple[yaml.Node, yaml.Node]], reader: yn.Reader, name: str, where: Location
) -> DeviceProbes | None:
    """The probe settings of a `devices:` entry written as a mapping; None when it sets none (only its name)."""
    what = f"the probes of device '{name}'"
    probes: tuple[str, ...] | None = None
    fraction: float | None = None
    if "probes" in entries:
        node = entries["probes"][1]
        if isinstance(node, yaml.ScalarNode) and yn.scalar(node) == ALL_PROBES:
            probes = PROBE_KINDS
        elif isinstance(node, yaml.SequenceNode):
            probes = parse_probes(node, reader, what)
        else:
            said = (
                repr(yn.scalar(node)) if isinstance(node, yaml.ScalarNode) and yn.scalar(node) is not None else yn.type_name(node)
            )
            reader.error(
                node,
                f"{what} must be a list of probe kinds ([self_signed, wrong_host, ...]), all (every kind), or [] (never "
                f"probe this device), not {said}",
            )
    if "probe_fraction" in entries:
        node = entries["probe_fraction"][1]
        fraction = parse_fraction(node, reader, f"the probe_fraction of device '{name}'")
        if probes == ():
            reader.error(node, f"device '{name}' has probes: [] (never probed): drop its probe_fraction, which would do nothing")
            fraction = None
    if probes is None and fraction is None:
        return None
    return DeviceProbes(name, where, probes, fraction)


@dataclass(frozen=True)
class Catalogue:
    """The probes a connection from one device to one host may get, how often, and who asked for them."""

    kinds: tuple[str, ...]
    fraction: float = 1.0
    source: Location | None = None  # the device entry whose own list this is; None: the host's rule (or defaults)


def catalogue(match: Match, device: DeviceProbes | None) -> Catalogue:
    """The effective catalogue for one device on one host.

    A device's own `probes` replace the rule's list on every host intercepted
    for it, named by a rule or not (the device under test gets the catalogue
    wherever its app goes; `[]` is a control device, never probed); its
    `probe_fraction` replaces the rule's. One thing a device cannot override:
    a rule that names the host and says `probes: []` keeps it unprobed for
    every device (a host that must not be disturbed). The defaults' list,
    written or not, is replaced: it is what the device's list is for.
    """
    rules = CLIENT.of(match.settings)
    if device is None:
        return Catalogue(rules.probes, rules.probe_fraction)
    fraction = rules.probe_fraction if device.probe_fraction is None else device.probe_fraction
    said = match.rule.overrides.get(CLIENT.name) if match.rule is not None else None
    if isinstance(said, ClientRules) and said.probes_off:
        return Catalogue((), fraction)
    if device.probes is None:
        return Catalogue(rules.probes, fraction)
    return Catalogue(device.probes, fraction, device.location if device.probes else None)


PROBES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "uniqueItems": True,
    "default": [],
    "items": {"enum": list(PROBE_KINDS)},
}
FRACTION_SCHEMA: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1}
DEVICE_PROBES_SCHEMA: dict[str, Any] = {
    "probes": {
        "oneOf": [{"const": ALL_PROBES}, {k: v for k, v in PROBES_SCHEMA.items() if k != "default"}],
        "description": "This device's own probes: they replace the rules' lists on every host intercepted for it, "
        "including hosts no rule names (a rule that says probes: [] still keeps its hosts unprobed). all: every kind. "
        "[]: never probe this device (a control device).",
    },
    "probe_fraction": {
        **{k: v for k, v in FRACTION_SCHEMA.items() if k != "default"},
        "description": "This device's share of probe-eligible connections, replacing the rules' probe_fraction.",
    },
}

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
                    **PROBES_SCHEMA,
                    "description": "Invalid certificates to present, each once per (client address, host), in this "
                    "order (a kind that does not apply to the host is skipped: the wildcard kinds for an IP address, "
                    "ip_name_only for a name); then connections are intercepted normally. Empty: no probing. "
                    "tls_downgrade, weak_cipher and anon_cipher present tlsgate's own certificate with only TLS 1.0/1.1, "
                    "RSA-CBC-SHA1 or anonymous suites on offer.",
                },
                "probe_fraction": {
                    **FRACTION_SCHEMA,
                    "description": "Share of a device's connections that may be probed get the next untried kind, "
                    "counted per device and rule (0.25: every fourth, the others are served normally in between); 1: every one.",
                },
            },
        },
    )
)
