"""The policy's JSON Schema, assembled from the core keys and each registered section's fragment.

Editors read `policies/tlsgate-policy.schema.json` for completion; it is this
module's output, and a test keeps the file equal to it, so the schema cannot
drift from the loader. Regenerate with `python -m tlsgate.policy.schema`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tlsgate.policy import sections as registry
from tlsgate.policy.loader import POLICY_VERSION
from tlsgate.policy.sections.client import DEVICE_PROBES_SCHEMA

CORE_DEFS: dict[str, Any] = {
    "device_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    "mode": {"enum": ["enforce", "report"], "description": "enforce blocks violations; report forwards and records them."},
    "host": {
        "type": "string",
        "description": "A host name (exactly that name), '*.example.com' (every subdomain at any depth, not example.com "
        "itself), or an IP address.",
        "pattern": "^(\\*\\.)?[^*/:\\s]+$|^[0-9a-fA-F:]+$|^\\[[0-9a-fA-F:]+\\]$",
    },
}


def build_schema() -> dict[str, Any]:
    settings: dict[str, Any] = {"mode": {"$ref": "#/$defs/mode"}}
    rule: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1},
        "hosts": {"oneOf": [{"$ref": "#/$defs/host"}, {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/host"}}]},
        "mode": {"$ref": "#/$defs/mode"},
    }
    top: dict[str, Any] = {
        "version": {"const": POLICY_VERSION, "description": "Policy format version."},
        "defaults": {
            "$ref": "#/$defs/settings",
            "description": "Settings for every host no rule matches, and the base every rule starts from.",
        },
        "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
        "devices": {
            "type": "object",
            "description": "Client address or network -> device name, or {name, probes, probe_fraction} for a device with "
            "its own probe settings (they belong to the name: every address of that name shares them, and only one entry "
            "may give them). Names label findings and metrics.",
            "propertyNames": {"pattern": "^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"},
            "additionalProperties": {
                "oneOf": [
                    {"$ref": "#/$defs/device_name"},
                    {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {"name": {"$ref": "#/$defs/device_name"}, **DEVICE_PROBES_SCHEMA},
                    },
                ]
            },
        },
    }
    defs: dict[str, Any] = dict(CORE_DEFS)
    for section in registry.SECTIONS.values():
        defs.update(section.defs)
        if section.top_level:
            top[section.name] = section.schema
            continue
        settings[section.name] = section.schema
        rule[section.name] = {"$ref": f"#/$defs/settings/properties/{section.name}"}
    defs["settings"] = {"type": "object", "additionalProperties": False, "properties": settings}
    defs["rule"] = {"type": "object", "required": ["hosts"], "additionalProperties": False, "properties": rule}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tlsgate.invalid/schema/policy-v1.json",
        "title": "tlsgate policy (version 1)",
        "description": "A tlsgate policy file. `tlsgate validate` is the authority: it also checks what a schema cannot "
        "(duplicate host patterns across files, ties).",
        "type": "object",
        "additionalProperties": False,
        "properties": top,
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
