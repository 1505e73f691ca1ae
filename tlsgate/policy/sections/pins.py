"""`pins:` per host and `pin_sets:` at the top: public-key pins a server's validated chain must match."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import Location, PolicyMessage
from tlsgate.policy.sections.base import Context, Section, register
from tlsgate.tls.pins import PinError, PinScope, PinSet, lint_pin_set, parse_pin

PIN_SET_KEYS = ("pins", "leaf", "ca", "expires")
NO_PINNING = "off"


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


def parse_pins(node: yaml.Node, reader: yn.Reader, context: Context) -> PinRef | Pinning | str | None:
    """`pins: name`, an inline list of pins, or `pins: off` to drop pinning the defaults set."""
    if isinstance(node, yaml.ScalarNode):
        value = yn.scalar(node)
        if value is False or value == NO_PINNING:
            return NO_PINNING
        name = yn.string(node, reader, "pins (a pin set name, a list of sha256/... pins, or off)")
        return PinRef(name, reader.loc(node)) if name else None
    pin_set = read_pin_list(node, reader, "inline", None)
    return Pinning(pin_set, reader.loc(node)) if pin_set else None


def read_pin_list(node: yaml.Node, reader: yn.Reader, name: str, expires: dt.date | None, lint: bool = True) -> PinSet | None:
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
    for warning in lint_pin_set(pin_set) if lint else []:
        reader.warn(node, warning)
    return pin_set


def read_scoped_pins(
    body: dict[str, tuple[yaml.Node, yaml.Node]],
    scopes: Sequence[PinScope],
    reader: yn.Reader,
    name: str,
    expires: dt.date | None,
) -> PinSet | None:
    """`leaf:` and `ca:` lists: one pin set whose leaf pins must match the leaf and CA pins a CA above it."""
    texts: list[str] = []
    kinds: list[PinScope] = []
    for scope in scopes:
        part = read_pin_list(body[scope][1], reader, f"{name}.{scope}", None, lint=False)
        if part is None:
            return None
        texts += part.pin_texts
        kinds += [scope] * len(part.pins)
    pin_set = PinSet(name, tuple(parse_pin(t) for t in texts), tuple(texts), expires, tuple(kinds))
    for warning in lint_pin_set(pin_set):
        reader.warn(body[scopes[0]][1], warning)
    return pin_set


def parse_pin_sets(node: yaml.Node, reader: yn.Reader, context: Context) -> None:
    """Named pin sets go into the load's context; `pins: NAME` anywhere resolves against them."""
    known, where = context.table("pin_sets"), context.table("pin_set_nodes")
    entries = yn.mapping(node, reader, "pin_sets")
    for name, (key_node, value_node) in (entries or {}).items():
        if name in known:
            reader.error(key_node, f"pin set '{name}' is already defined at {where[name]}")
            continue
        body = yn.section(value_node, reader, f"pin set '{name}'", PIN_SET_KEYS)
        if body is None:
            continue
        scoped = [key for key in ("leaf", "ca") if key in body]
        if ("pins" in body) == bool(scoped):
            reader.error(
                value_node,
                f"pin set '{name}' needs 'pins' (any certificate of the chain, as on Android), or 'leaf' and/or 'ca' "
                "(as Apple's NSPinnedLeafIdentities / NSPinnedCAIdentities: each one given must match), not both",
            )
            continue
        expires = None
        if "expires" in body:
            raw = yn.scalar(body["expires"][1]) if isinstance(body["expires"][1], yaml.ScalarNode) else None
            if not isinstance(raw, dt.date) or isinstance(raw, dt.datetime):
                reader.error(body["expires"][1], f"pin set '{name}': expires must be a date like 2027-06-30")
                continue
            expires = raw
        pin_set = (
            read_scoped_pins(body, scoped, reader, name, expires)
            if scoped
            else read_pin_list(body["pins"][1], reader, name, expires)
        )
        if pin_set is not None:
            known[name] = pin_set
            where[name] = reader.loc(key_node)


def resolve_pins(value: Any, context: Context, messages: list[PolicyMessage]) -> Pinning | None:
    """Pin set names -> pin sets, now that every file's pin_sets are known; `off` -> no pinning."""
    if value == NO_PINNING:
        return None
    if isinstance(value, PinRef):
        known = context.table("pin_sets")
        found = known.get(value.name)
        if found is None:
            names = ", ".join(sorted(known)) or "none defined"
            messages.append(PolicyMessage(value.location, f"unknown pin set '{value.name}' (pin_sets: {names})"))
            return None
        return Pinning(found, context.table("pin_set_nodes")[value.name])
    return value


PIN_DEF: dict[str, Any] = {
    "type": "string",
    "pattern": "^sha256/[A-Za-z0-9+/]{43}=$",
    "description": "sha256/<base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo> (Android NSC, OkHttp, HPKP format).",
}

PINS: Section[Pinning] = register(
    Section(
        name="pins",
        parse=parse_pins,
        resolve=resolve_pins,
        schema={
            "oneOf": [
                {"type": "string", "description": "Name of a pin set, or 'off'."},
                {"const": False},
                {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/pin"}},
            ],
            "description": "Pin set for this host: a pin_sets name, an inline list, or off.",
        },
        defs={"pin": PIN_DEF},
    )
)

PIN_SETS: Section[Any] = register(
    Section(
        name="pin_sets",
        parse=parse_pin_sets,
        top_level=True,
        schema={
            "type": "object",
            "description": "Named pin sets, referenced by `pins: NAME`.",
            "additionalProperties": {"$ref": "#/$defs/pin_set"},
        },
        defs={
            "pin": PIN_DEF,
            "pin_set": {
                "type": "object",
                "oneOf": [{"required": ["pins"]}, {"anyOf": [{"required": ["leaf"]}, {"required": ["ca"]}]}],
                "additionalProperties": False,
                "properties": {
                    "pins": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/pin"},
                        "description": "Any pin matching any certificate of the validated chain passes; include a backup pin.",
                    },
                    "leaf": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/pin"},
                        "description": "Apple ATS semantics (NSPinnedLeafIdentities): the leaf's key must be one of "
                        "these. With 'ca' too, both must match.",
                    },
                    "ca": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/pin"},
                        "description": "Apple ATS semantics (NSPinnedCAIdentities): a CA certificate above the leaf "
                        "must have one of these keys. With 'leaf' too, both must match.",
                    },
                    "expires": {
                        "type": "string",
                        "format": "date",
                        "description": "After this date (YYYY-MM-DD) the pin set is not enforced, as on Android; each use "
                        "is recorded.",
                    },
                },
            },
        },
    )
)
