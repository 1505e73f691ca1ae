"""The policy reference page of the docs (docs/policies/reference.md), rendered from the JSON Schema.

The schema is assembled from each section's own fragment (tlsgate/policy/schema.py), so a reference made
from it lists every key the loader accepts with the words the section's author gave it; a test keeps the
committed page equal to this module's output, so the page cannot drift from the code. Regenerate with
`python -m tlsgate.policy.reference > docs/policies/reference.md`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tlsgate.policy.schema import build_schema

# The hand-written page each settings section has (docs/policies/<page>), linked from its reference entry.
SECTION_PAGES = {
    "cleartext": "cleartext.md",
    "tls": "tls.md",
    "certificates": "tls.md",
    "pins": "tls.md#pin-sets",
    "pin_sets": "tls.md#pin-sets",
    "client": "client.md",
    "quic": "quic.md",
    "payload": "payload.md",
    "identifiers": "payload.md",
    "app": "app.md",
    "timeouts": "timeouts.md",
    "revocation": "revocation.md",
    "ct": "ct.md",
    "ct_log_list": "ct.md",
}

MAX_DEPTH = 4  # nested objects are listed key by key to this depth; deeper ones are shown as `object`


class Reference:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema["$defs"]
        self.schema = schema

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """`node` with a local $ref followed (its own description kept over the target's)."""
        seen = 0
        while "$ref" in node and seen < 8:
            target: Any = self.schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            seen += 1
        return node

    def kind(self, node: dict[str, Any]) -> str:
        """A short type: `one of a, b`, `list of X`, `number 1-86400`, `map of X`..."""
        node = self.resolve(node)
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "enum" in node:
            return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
        for key in ("oneOf", "anyOf"):
            if key in node:
                return " or ".join(dict.fromkeys(self.kind(option) for option in node[key]))
        kind = node.get("type", "any")
        if isinstance(kind, list):
            return " or ".join(str(k) for k in kind)
        if kind == "array":
            items = node.get("items")
            return f"list of {self.kind(items)}" if isinstance(items, dict) else "list"
        if kind == "object" and "properties" not in node:
            values = node.get("additionalProperties")
            return f"map of {self.kind(values)}" if isinstance(values, dict) else "object"
        if kind in ("number", "integer"):
            low, high = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum")
            if low is not None or high is not None:
                return f"{kind} {'' if low is None else low}–{'' if high is None else high}"
        if kind == "string" and "pattern" in node:
            return f"string matching `{node['pattern']}`"
        return str(kind)

    def object_form(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """The object-with-keys form of `node`, itself or one of its oneOf/anyOf options (`cleartext: {http: ...}`)."""
        node = self.resolve(node)
        if "properties" in node:
            return node
        options = [self.resolve(option) for key in ("oneOf", "anyOf") for option in node.get(key, ())]
        return next((option for option in options if "properties" in option), None)

    def rows(self, prefix: str, node: dict[str, Any], depth: int = 0) -> list[str]:
        """One table row per key of `node` (an object schema), nested objects' keys after their own row."""
        node = self.resolve(node)
        out = []
        required = set(node.get("required", ()))
        for name, child in node.get("properties", {}).items():
            child = self.resolve(child)
            path = f"{prefix}.{name}" if prefix else name
            form = self.object_form(child) if depth < MAX_DEPTH else None
            nested = form is not None
            kind = ("object" if "properties" in child else self.kind(child)) if nested else self.kind(child)
            description = " ".join(str(child.get("description", "")).split()).replace("|", "\\|")
            if name in required:
                description = ("**required.** " + description).strip()
            out.append(f"| `{path}` | {kind.replace('|', chr(92) + '|')} | {description} |")
            if form is not None:
                out += self.rows(path, form, depth + 1)
        return out


def table(rows: list[str]) -> list[str]:
    return ["| key | value | meaning |", "| --- | --- | --- |", *rows] if rows else []


def render() -> str:
    schema = build_schema()
    ref = Reference(schema)
    settings = ref.defs["settings"]["properties"]
    top = schema["properties"]
    lines = [
        "# Policy reference",
        "",
        "<!-- Generated by `python -m tlsgate.policy.reference > docs/policies/reference.md` from the policy's JSON",
        "     Schema; tests/unit/test_docs_reference.py fails when this page and the code differ. Do not edit. -->",
        "",
        "Every key a policy file may hold, generated from the schema the loader's sections declare "
        "([`policies/tlsgate-policy.schema.json`](../../policies/tlsgate-policy.schema.json), the file editors read). "
        "`tlsgate validate` is the authority: it also checks what a schema cannot. The pages of this section say "
        "what each setting is for, with examples.",
        "",
        "## Top level",
        "",
        *table(ref.rows("", {"properties": {k: v for k, v in top.items() if k not in ("defaults", "rules")}})),
        "",
        "`defaults` holds the settings below for every host no rule matches, and is the base every rule starts from; "
        "`rules` is a list of rules, each `hosts` (required) and optional `name` and `mode` plus any of the settings.",
        "",
        "## Rules",
        "",
        *table(ref.rows("", {"properties": {k: v for k, v in ref.defs["rule"]["properties"].items() if k not in settings}})),
        "",
        "## Settings",
        "",
        "Each is a key of `defaults:` and of every rule.",
    ]
    for name, node in settings.items():
        lines += ["", f"### `{name}`", ""]
        description = " ".join(str(ref.resolve(node).get("description", "")).split())
        page = SECTION_PAGES.get(name)
        if description or page:
            lines += [" ".join(filter(None, [description, f"See [{name}]({page})." if page else ""])), ""]
        resolved = ref.resolve(node)
        form = ref.object_form(resolved)
        if "properties" not in resolved:
            lines.append(f"Value: {ref.kind(resolved)}.")
        if form is not None:
            lines += ([""] if "properties" not in resolved else []) + table(ref.rows(name, form))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
