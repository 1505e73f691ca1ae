"""`payload:` per host, and `identifiers:` at the top: what tlsgate looks for inside decrypted requests.

    defaults:
      payload: report              # or block / ignore: all three checks alike
    rules:
      - hosts: api.example.com
        payload: {ecb: block, secrets: report, identifiers: ignore, max_bytes: 131072}
    identifiers:                   # device name (from `devices:`) or "*" for every client
      pixel-7:
        email: tester@example.com
        phone: "+1 555 0100 123"
        advertising_id: [38400000-8cf0-11bd-b23e-10b96e40000d]

`report` is the default: findings are recorded and traffic passes. `block`
refuses the request under `mode: enforce` (and reports under `mode: report`,
like every other check). A rule's `payload` replaces the defaults' as a whole:
sub-keys it leaves out are `report`, not inherited.

The identifier values live in the policy file and, as their precomputed wire
forms, in memory; no message this module writes quotes one.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from tlsgate.payload.identifiers import ANY_DEVICE, KINDS, MIN_LENGTH, SeedIndex
from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import PolicyMessage
from tlsgate.policy.sections.base import Context, Section, register

_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PayloadAction(enum.StrEnum):
    REPORT = "report"
    BLOCK = "block"
    IGNORE = "ignore"


CHECKS = ("ecb", "secrets", "identifiers")
PAYLOAD_KEYS = (*CHECKS, "max_bytes")
DEFAULT_MAX_BYTES = 65536
MAX_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PayloadRules:
    ecb: PayloadAction = PayloadAction.REPORT
    secrets: PayloadAction = PayloadAction.REPORT
    identifiers: PayloadAction = PayloadAction.REPORT
    max_bytes: int = DEFAULT_MAX_BYTES
    seeds: SeedIndex | None = field(default=None, compare=False, repr=False)  # every file's `identifiers:`, once resolved

    def action(self, check: str) -> PayloadAction:
        return PayloadAction(getattr(self, check))

    def wanted(self) -> dict[str, bool]:
        """Which detectors run (each check not set to `ignore`): every inspecting path asks the same question."""
        return {c: self.action(c) is not PayloadAction.IGNORE for c in CHECKS}

    @property
    def off(self) -> bool:
        return all(self.action(c) is PayloadAction.IGNORE for c in CHECKS)

    def __str__(self) -> str:
        return ", ".join(f"{c} {self.action(c)}" for c in CHECKS) + f", max_bytes {self.max_bytes}"


def parse_payload(node: yaml.Node, reader: yn.Reader, context: Context) -> PayloadRules | None:
    where = f"{context.where}.payload" if context.where else "payload"
    if not isinstance(node, yaml.MappingNode):
        value = yn.choice(node, reader, where, tuple(PayloadAction))
        return PayloadRules(*(PayloadAction(value),) * 3) if value else None
    entries = yn.section(node, reader, where, PAYLOAD_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    ok = True
    for key, (_, value_node) in entries.items():
        if key == "max_bytes":
            size = yn.scalar(value_node) if isinstance(value_node, yaml.ScalarNode) else None
            if type(size) is not int or not 1024 <= size <= MAX_MAX_BYTES:
                reader.error(value_node, f"{where}.max_bytes must be a whole number of bytes from 1024 to {MAX_MAX_BYTES}")
                ok = False
                continue
            values[key] = size
        elif key in CHECKS:
            choice = yn.choice(value_node, reader, f"{where}.{key}", tuple(PayloadAction))
            if choice is None:
                ok = False
                continue
            values[key] = PayloadAction(choice)
        else:
            ok = False
    return PayloadRules(**values) if ok else None


def parse_identifiers(node: yaml.Node, reader: yn.Reader, context: Context) -> None:
    """Device -> kind -> value(s), into the load's context; `payload` resolves against every file's entries."""
    known = context.table("identifiers")
    entries = yn.mapping(node, reader, "identifiers")
    for device, (key_node, value_node) in (entries or {}).items():
        if device != ANY_DEVICE and not _DEVICE_NAME.fullmatch(device):
            reader.error(key_node, "identifiers: each key is a device name as `devices:` gives it, or '*' for every client")
            continue
        if device in known:
            reader.error(key_node, f"identifiers for device '{device}' are already declared in another file; declare them once")
            continue
        kinds = yn.section(value_node, reader, f"identifiers.{device}", KINDS)
        if kinds is None:
            continue
        declared: dict[str, tuple[str, ...]] = {}
        for kind, (_, values_node) in kinds.items():
            if kind not in KINDS:
                continue
            items = values_node.value if isinstance(values_node, yaml.SequenceNode) else [values_node]
            texts = []
            for item in items:
                value = yn.scalar(item) if isinstance(item, yaml.ScalarNode) else None
                if type(value) is int:
                    value = str(value)  # a phone number or IMEI written without quotes
                if not isinstance(value, str) or len(value.strip()) < MIN_LENGTH:
                    # the value itself is never quoted: messages end up in CI logs
                    reader.error(item, f"identifiers.{device}.{kind}: each value must be a string of {MIN_LENGTH}+ characters")
                    continue
                texts.append(value.strip())
            if texts:
                declared[kind] = tuple(texts)
        known[device] = declared


def resolve_payload(value: Any, context: Context, messages: list[PolicyMessage]) -> PayloadRules | None:
    """Attach the seeded identifiers of every file (one index per load, shared by every host)."""
    if not isinstance(value, PayloadRules):
        return value
    index = context.shared.get("identifier_index")
    if index is None:
        index = SeedIndex(dict(context.table("identifiers")))
        context.shared["identifier_index"] = index
    return replace(value, seeds=index)


_ACTION = {"enum": [str(a) for a in PayloadAction]}

PAYLOAD = register(
    Section(
        name="payload",
        parse=parse_payload,
        resolve=resolve_payload,
        default=PayloadRules(),
        schema={"$ref": "#/$defs/payload"},
        defs={
            "payload": {
                "description": "What tlsgate looks for inside every decrypted request: AES-ECB and deterministic "
                "encryption (ecb), credentials in URLs, unsigned JWTs, Basic auth to hosts no rule names and provider "
                "API keys (secrets), the seeded identifiers of `identifiers:` (identifiers). report (the default) "
                "records, block refuses under mode: enforce, ignore skips.",
                "oneOf": [
                    {**_ACTION, "description": "All three checks alike."},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "ecb": {**_ACTION, "description": "AES-ECB (repeated cipher blocks) and deterministic encryption."},
                            "secrets": {
                                **_ACTION,
                                "description": "Credentials in URLs, unsigned JWTs, Basic auth to "
                                "unnamed hosts, provider API keys.",
                            },
                            "identifiers": {
                                **_ACTION,
                                "description": "Seeded personal identifiers, in plain, "
                                "URL-encoded, base64 or MD5/SHA-1/SHA-256 form.",
                            },
                            "max_bytes": {
                                "type": "integer",
                                "minimum": 1024,
                                "maximum": MAX_MAX_BYTES,
                                "description": f"Body bytes inspected per request (default {DEFAULT_MAX_BYTES}); a "
                                "streamed body is tapped up to this, never buffered.",
                            },
                        },
                    },
                ],
            }
        },
    )
)

_KIND_VALUES = {
    "oneOf": [
        {"type": "string", "minLength": MIN_LENGTH},
        {"type": "integer"},
        {"type": "array", "minItems": 1, "items": {"oneOf": [{"type": "string", "minLength": MIN_LENGTH}, {"type": "integer"}]}},
    ]
}

IDENTIFIERS: Section[Any] = register(
    Section(
        name="identifiers",
        parse=parse_identifiers,
        top_level=True,
        schema={
            "type": "object",
            "description": "Seeded personal identifiers per device name (as `devices:` names it), or '*' for every "
            "client. Findings name the kind, encoding, field and length, never the value.",
            "propertyNames": {"pattern": f"^(\\{ANY_DEVICE}|[A-Za-z0-9][A-Za-z0-9._-]{{0,63}})$"},
            "additionalProperties": {"$ref": "#/$defs/device_identifiers"},
        },
        defs={
            "device_identifiers": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {kind: _KIND_VALUES for kind in KINDS},
            }
        },
    )
)
