"""`certificates:` minimums a server's chain must meet even when OpenSSL accepted it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.sections.base import Context, Section, boolean, register

CERT_KEYS = ("min_rsa_bits", "min_ec_bits", "allow_sha1", "expiry_warning_days")
BOUNDS = {"min_rsa_bits": (1024, 16384), "min_ec_bits": (160, 571), "expiry_warning_days": (0, 3650)}


@dataclass(frozen=True)
class CertRules:
    min_rsa_bits: int = 2048
    min_ec_bits: int = 256
    allow_sha1: bool = False
    expiry_warning_days: int = 14


def parse_certificates(node: yaml.Node, reader: yn.Reader, context: Context) -> CertRules | None:
    entries = yn.section(node, reader, "certificates", CERT_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    for key, (low, high) in BOUNDS.items():
        if key in entries:
            node_ = entries[key][1]
            value = yn.scalar(node_) if isinstance(node_, yaml.ScalarNode) else None
            if type(value) is not int or not low <= value <= high:
                reader.error(node_, f"certificates.{key} must be a whole number from {low} to {high}")
            else:
                values[key] = value
    if "allow_sha1" in entries:
        value = boolean(entries["allow_sha1"][1], reader, "certificates.allow_sha1")
        if value is not None:
            values["allow_sha1"] = value
    return CertRules(**values)


def _integer(key: str, default: int) -> dict[str, Any]:
    low, high = BOUNDS[key]
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


CERTIFICATES = register(
    Section(
        name="certificates",
        parse=parse_certificates,
        default=CertRules(),
        schema={
            "type": "object",
            "additionalProperties": False,
            "description": "Rules on top of chain validation.",
            "properties": {
                "min_rsa_bits": _integer("min_rsa_bits", CertRules.min_rsa_bits),
                "min_ec_bits": _integer("min_ec_bits", CertRules.min_ec_bits),
                "allow_sha1": {"type": "boolean", "default": False},
                "expiry_warning_days": _integer("expiry_warning_days", CertRules.expiry_warning_days),
            },
        },
    )
)
