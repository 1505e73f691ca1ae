"""`app:` what the app itself declares for a host (Android Network Security Config, iOS App Transport Security).

`tlsgate import` writes these from an APK, an NSC XML file, an IPA or an
Info.plist; the conformance check holds the app's live traffic to them, and
`must_pin` asserts that the app refuses tlsgate's own certificate. Every value
names where the app declares it (`declared_at`), so a finding can say which
file and element the traffic contradicts, not only which tlsgate rule matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import Location, PolicyMessage
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.policy.sections.pins import Pinning, PinRef, parse_pins, resolve_pins
from tlsgate.policy.sections.tls import version_text

APP_KEYS = (
    "source",
    "platform",
    "build",
    "cleartext",
    "pins",
    "must_pin",
    "min_version",
    "forward_secrecy",
    "user_cas",
    "declared_at",
)
PLATFORMS = ("android", "ios")
BUILDS = ("release", "debug")
CLEARTEXT_CHOICES = ("forbid", "permit")
USER_CA_CHOICES = ("trusted", "untrusted")
DECLARABLE = ("cleartext", "pins", "must_pin", "min_version", "forward_secrecy", "user_cas")


@dataclass(frozen=True)
class AppRules:
    """What the app promises for a host; None means it declares nothing on that point.

    `source` is the element that governs the host (its `<domain-config>` or ATS
    exception entry); `declared_at` names, per key, the element a value really
    comes from, which differs when it is inherited (a `<base-config>`, a parent
    `<domain-config>`, the platform default for the target SDK).
    """

    source: str
    platform: str = "android"
    build: str = "release"
    cleartext: str | None = None
    pins: Pinning | PinRef | None = None
    must_pin: bool = False
    min_version: str | None = None
    forward_secrecy: bool | None = None
    user_cas: str | None = None
    declared_at: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    location: Location | None = field(default=None, compare=False)

    def where(self, key: str) -> str:
        """The app's file and element that declares `key`, for findings."""
        return self.declared_at.get(key) or self.source

    @property
    def pinning(self) -> Pinning | None:
        return self.pins if isinstance(self.pins, Pinning) else None


def parse_app(node: yaml.Node, reader: yn.Reader, context: Context) -> AppRules | None:
    entries = yn.section(node, reader, "app", APP_KEYS)
    if entries is None:
        return None
    if "source" not in entries:
        reader.error(node, "app needs 'source': the app's file and element this host's declaration comes from")
        return None
    values: dict[str, Any] = {"location": reader.loc(node)}
    values["source"] = yn.string(entries["source"][1], reader, "app.source")
    choices = {"platform": PLATFORMS, "build": BUILDS, "cleartext": CLEARTEXT_CHOICES, "user_cas": USER_CA_CHOICES}
    for key, allowed in choices.items():
        if key in entries:
            values[key] = yn.choice(entries[key][1], reader, f"app.{key}", allowed)
    for key in ("must_pin", "forward_secrecy"):
        if key in entries:
            values[key] = boolean(entries[key][1], reader, f"app.{key}")
    if "min_version" in entries:
        values["min_version"] = version_text(entries["min_version"][1], reader, "app.min_version")
    if "pins" in entries:
        pins = parse_pins(entries["pins"][1], reader, context)
        values["pins"] = None if isinstance(pins, str) else pins
    if "declared_at" in entries:
        values["declared_at"] = _declared_at(entries["declared_at"][1], reader)
    if any(values.get(k) is None for k in values if k != "pins") or values["source"] is None:
        return None
    return AppRules(**values)


def _declared_at(node: yaml.Node, reader: yn.Reader) -> dict[str, str] | None:
    entries = yn.section(node, reader, "app.declared_at", DECLARABLE)
    if entries is None:
        return None
    out: dict[str, str] = {}
    for key, (_, value_node) in entries.items():
        if key in DECLARABLE:
            text = yn.string(value_node, reader, f"app.declared_at.{key}")
            if text is None:
                return None
            out[key] = text
    return out


def resolve_app(value: Any, context: Context, messages: list[PolicyMessage]) -> Any:
    """The app's pin set name -> its pin set, once every file's `pin_sets` are read."""
    if not isinstance(value, AppRules) or value.pins is None:
        return value
    pinning = resolve_pins(value.pins, context, messages)
    return AppRules(**{**value.__dict__, "pins": pinning})


APP: Section[AppRules] = register(
    Section(
        name="app",
        parse=parse_app,
        resolve=resolve_app,
        schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["source"],
            "description": "What the app itself declares for these hosts (written by `tlsgate import` from an Android "
            "network security config or iOS App Transport Security); live traffic that contradicts it is a "
            "`conformance` finding naming the app's file and element. A rule's app section replaces the default's whole.",
            "properties": {
                "source": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The app's file:line and element governing these hosts, e.g. "
                    "'res/xml/network_security_config.xml:7 <domain-config>'.",
                },
                "platform": {"enum": list(PLATFORMS), "default": "android"},
                "build": {
                    "enum": list(BUILDS),
                    "default": "release",
                    "description": "release: trusting user-installed CAs is a finding (user_cas_in_release).",
                },
                "cleartext": {
                    "enum": list(CLEARTEXT_CHOICES),
                    "description": "forbid: a plain-text request to these hosts is a broken promise (cleartext_forbidden).",
                },
                "pins": {
                    "type": "string",
                    "description": "The app's pin set (a pin_sets name): a server chain matching none is pin_mismatch; "
                    "expiry within 30 days is pins_expire_soon.",
                },
                "must_pin": {
                    "type": "boolean",
                    "default": False,
                    "description": "Pinning assertion: the app must refuse tlsgate's certificate for these hosts "
                    "(check `pinning`: not_pinned / pinned / ca_not_installed / undetermined).",
                },
                "min_version": {
                    "$ref": "#/$defs/tls_version",
                    "description": "Lowest TLS version the app declares (ATS NSExceptionMinimumTLSVersion).",
                },
                "forward_secrecy": {
                    "type": "boolean",
                    "description": "The app requires forward-secret suites (ATS NSExceptionRequiresForwardSecrecy).",
                },
                "user_cas": {
                    "enum": list(USER_CA_CHOICES),
                    "description": "Whether the app trusts user-installed CAs for these hosts (NSC trust-anchors).",
                },
                "declared_at": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {key: {"type": "string", "minLength": 1} for key in DECLARABLE},
                    "description": "Per key, the app's file:line and element the value comes from (inheritance "
                    "included); findings quote it.",
                },
            },
        },
    )
)
