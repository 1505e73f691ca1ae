"""`cleartext:` what happens to plain http:// and ws:// requests to a host."""

from __future__ import annotations

import enum

import yaml

from proxy.policy import yamlnodes as yn
from proxy.policy.sections.base import Context, Section, register


class Cleartext(enum.StrEnum):
    BLOCK = "block"
    ALLOW = "allow"


def parse_cleartext(node: yaml.Node, reader: yn.Reader, context: Context) -> Cleartext | None:
    value = yn.choice(node, reader, f"{context.where}.cleartext", tuple(Cleartext))
    return Cleartext(value) if value else None


SECTION = register(
    Section(
        name="cleartext",
        parse=parse_cleartext,
        default=Cleartext.BLOCK,
        schema={"$ref": "#/$defs/cleartext"},
        defs={"cleartext": {"enum": ["block", "allow"], "description": "Plain http:// and ws:// requests."}},
    )
)
