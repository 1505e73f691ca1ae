"""Parsers for the policy sections the upstream TLS checks own: tls, certificates, pins, pin_sets
(and client, which the client audits own).

Each returns an immutable, validated object (or None after reporting errors at
their exact YAML location); the matcher hands these objects to the checks
untouched, so the checks never see YAML.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import yaml

from proxy.policy import yamlnodes as yn
from proxy.policy.model import Location
from proxy.policy.presets import PRESETS, TLS_VERSIONS, CipherPolicy, parse_cipher_names
from proxy.tls.certcheck import CertRules
from proxy.tls.pins import PinError, PinSet, lint_pin_set
from proxy.tls.probes import PROBE_KINDS

TLS_KEYS = ("min_version", "ciphers")
CIPHER_KEYS = ("preset", "allow", "deny")
CERT_KEYS = ("min_rsa_bits", "min_ec_bits", "allow_sha1", "expiry_warning_days")
PIN_SET_KEYS = ("pins", "expires")
CLIENT_KEYS = ("min_version", "weak_suites", "require_sni", "probes")
WEAK_SUITE_CHOICES = ("report", "strict", "ignore")


@dataclass(frozen=True)
class TlsRules:
    """Minimum protocol version and cipher policy for connections to upstream servers."""

    min_version: str = "1.2"
    ciphers: CipherPolicy = CipherPolicy()


@dataclass(frozen=True)
class PinRef:
    """`pins: name` before the pin set it names is known (pin sets may live in another file)."""

    name: str
    location: Location


@dataclass(frozen=True)
class Pinning:
    """The pin set in force for a host and where it was defined, for messages that say what to edit."""

    pin_set: PinSet
    location: Location


NO_PINNING = "off"


@dataclass(frozen=True)
class ClientRules:
    """What tlsgate expects of the apps themselves, and which invalid certificates it tries them with.

    `min_version` judges the best version a client offers (enforce: refuse the
    handshake; report: record it). `weak_suites`: `report` records broken suites
    offered, or a client offering nothing but weak ones; `strict` also records
    weak suites offered next to strong ones; `ignore` records nothing.
    `probes` is empty by default: presenting bad certificates is opt-in.
    """

    min_version: str = "1.2"
    weak_suites: str = "report"
    require_sni: bool = True
    probes: tuple[str, ...] = ()


def version_text(node: yaml.Node, reader: yn.Reader, what: str) -> str | None:
    """TLS versions as "1.2"; YAML reads an unquoted 1.2 as a float, which users will write."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    text = f"{value:.1f}" if isinstance(value, float) else str(value) if isinstance(value, str | int) else None
    if text not in TLS_VERSIONS:
        reader.error(node, f"{what} must be one of {', '.join(TLS_VERSIONS)}, not {value!r}")
        return None
    return text


def parse_tls(node: yaml.Node, reader: yn.Reader, context: Any) -> TlsRules | None:
    entries = yn.section(node, reader, "tls", TLS_KEYS)
    if entries is None:
        return None
    min_version = "1.2"
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


def parse_certificates(node: yaml.Node, reader: yn.Reader, context: Any) -> CertRules | None:
    entries = yn.section(node, reader, "certificates", CERT_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    bounds = {"min_rsa_bits": (1024, 16384), "min_ec_bits": (160, 571), "expiry_warning_days": (0, 3650)}
    for key, (low, high) in bounds.items():
        if key in entries:
            node_ = entries[key][1]
            value = yn.scalar(node_) if isinstance(node_, yaml.ScalarNode) else None
            if type(value) is not int or not low <= value <= high:
                reader.error(node_, f"certificates.{key} must be a whole number from {low} to {high}")
            else:
                values[key] = value
    if "allow_sha1" in entries:
        node_ = entries["allow_sha1"][1]
        value = yn.scalar(node_) if isinstance(node_, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            reader.error(node_, "certificates.allow_sha1 must be true or false")
        else:
            values["allow_sha1"] = value
    return CertRules(**values)


def parse_pins(node: yaml.Node, reader: yn.Reader, context: Any) -> PinRef | Pinning | str | None:
    """`pins: name`, an inline list of pins, or `pins: off` to drop pinning the defaults set."""
    if isinstance(node, yaml.ScalarNode):
        value = yn.scalar(node)
        if value is False or value == NO_PINNING:
            return NO_PINNING
        name = yn.string(node, reader, "pins (a pin set name, a list of sha256/... pins, or off)")
        return PinRef(name, reader.loc(node)) if name else None
    pin_set = read_pin_list(node, reader, "inline", None)
    return Pinning(pin_set, reader.loc(node)) if pin_set else None


def read_pin_list(node: yaml.Node, reader: yn.Reader, name: str, expires: dt.date | None) -> PinSet | None:
    texts = yn.strings(node, reader, "pins")
    ok = True
    for item, text in texts:
        try:
            PinSet.from_strings(name, [text])
        except PinError as exc:
            reader.error(item, str(exc))
            ok = False
    if not ok or not texts:
        return None
    pin_set = PinSet.from_strings(name, [t for _, t in texts], expires)
    for warning in lint_pin_set(pin_set):
        reader.warn(node, warning)
    return pin_set


def parse_pin_sets(node: yaml.Node, reader: yn.Reader, context: Any) -> None:
    entries = yn.mapping(node, reader, "pin_sets")
    for name, (key_node, value_node) in (entries or {}).items():
        if name in context.pin_sets:
            reader.error(key_node, f"pin set '{name}' is already defined at {context.pin_set_nodes[name]}")
            continue
        body = yn.section(value_node, reader, f"pin set '{name}'", PIN_SET_KEYS)
        if body is None:
            continue
        if "pins" not in body:
            reader.error(value_node, f"pin set '{name}' needs 'pins': a list of sha256/<base64> pins")
            continue
        expires = None
        if "expires" in body:
            raw = yn.scalar(body["expires"][1]) if isinstance(body["expires"][1], yaml.ScalarNode) else None
            if not isinstance(raw, dt.date) or isinstance(raw, dt.datetime):
                reader.error(body["expires"][1], f"pin set '{name}': expires must be a date like 2027-06-30")
                continue
            expires = raw
        pin_set = read_pin_list(body["pins"][1], reader, name, expires)
        if pin_set is not None:
            context.pin_sets[name] = pin_set
            context.pin_set_nodes[name] = reader.loc(key_node)


def parse_client(node: yaml.Node, reader: yn.Reader, context: Any) -> ClientRules | None:
    entries = yn.section(node, reader, "client", CLIENT_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    if "min_version" in entries:
        values["min_version"] = version_text(entries["min_version"][1], reader, "client.min_version")
    if "weak_suites" in entries:
        values["weak_suites"] = yn.choice(entries["weak_suites"][1], reader, "client.weak_suites", WEAK_SUITE_CHOICES)
    if "require_sni" in entries:
        node_ = entries["require_sni"][1]
        value = yn.scalar(node_) if isinstance(node_, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            reader.error(node_, "client.require_sni must be true or false")
        values["require_sni"] = value
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


SECTION_PARSERS = {"tls": parse_tls, "certificates": parse_certificates, "pins": parse_pins, "client": parse_client}
TOP_PARSERS = {"pin_sets": parse_pin_sets}
DEFAULT_SECTIONS: dict[str, Any] = {"tls": TlsRules(), "certificates": CertRules(), "client": ClientRules()}
