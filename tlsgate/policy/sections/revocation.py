"""`revocation:` whether an upstream must staple a good OCSP response, and what a stapled `revoked` does.

    defaults:
      revocation: {stapling: require, revoked: block}
    rules:
      - hosts: legacy.example.com
        revocation: report         # the same as {stapling: report}

A section of its own rather than keys under `tls:`: a rule's section replaces
the defaults' whole, and a rule that only tightens `tls.min_version` must not
silently drop the defaults' stapling requirement with it.

`stapling` says whether tlsgate asks the server for a stapled response at all:
`off` (the default) leaves the handshake exactly as mitmproxy makes it, so it
resolves to no value: the stapled-phase judge (`tlsgate.checks.revocation`)
runs, and a staple is asked for, only where a value is set;
`report` asks, and records a missing or unusable one; `require` asks, and
refuses the server without a good one (recorded under `mode: report`, as
everywhere). `revoked` says what an authentic `revoked` answer does once one
is asked for: `block` (the default) or `report`. Each value keeps where it was
written, so a finding can say which line to change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import Location, PolicyMessage
from tlsgate.policy.sections.base import Context, Section, register


class Stapling(enum.StrEnum):
    OFF = "off"
    REPORT = "report"
    REQUIRE = "require"


class Revoked(enum.StrEnum):
    BLOCK = "block"
    REPORT = "report"


REVOCATION_KEYS = ("stapling", "revoked")


@dataclass(frozen=True)
class RevocationRules:
    """One host's revocation rules; `location` is where the section was written (None: the built-in default)."""

    stapling: Stapling = Stapling.OFF
    revoked: Revoked = Revoked.BLOCK
    location: Location | None = field(default=None, compare=False)

    @property
    def asks(self) -> bool:
        """Whether tlsgate requests a stapled response (the status_request extension) from this host."""
        return self.stapling is not Stapling.OFF

    @property
    def where(self) -> str:
        return self.location.rule_ref if self.location else "tlsgate's built-in default"


def _word(node: yaml.Node, reader: yn.Reader, what: str, choices: type[enum.StrEnum]) -> Any:
    """One of `choices`; YAML 1.1 reads a bare `off` as false, which users will write."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if value is False and "off" in tuple(choices):
        return choices("off")
    if isinstance(value, str) and len(value) > 40 and value not in tuple(choices):
        reader.error(node, f"{what} must be one of {', '.join(choices)}, not a {len(value)}-character text")
        return None
    word = yn.choice(node, reader, what, tuple(choices))
    return choices(word) if word is not None else None


def parse_revocation(node: yaml.Node, reader: yn.Reader, context: Context) -> RevocationRules | None:
    where = f"{context.where}.revocation" if context.where else "revocation"
    location = reader.loc(node)
    if not isinstance(node, yaml.MappingNode):
        if isinstance(node, yaml.SequenceNode):
            reader.error(node, f"{where} must be off, report or require, or a mapping with stapling/revoked, not a list")
            return None
        stapling = _word(node, reader, where, Stapling)
        return RevocationRules(stapling, location=location) if stapling is not None else None
    entries = yn.section(node, reader, where, REVOCATION_KEYS, f"{where} (stapling, revoked)")
    if entries is None:
        return None
    if not entries:
        reader.error(node, f"{where} is empty: write stapling (off, report, require) and/or revoked (block, report)")
        return None
    # Writing the section at all means "look at staples": without `stapling`, a missing one is recorded.
    values: dict[str, Any] = {"stapling": Stapling.REPORT, "location": location}
    ok = all(key in REVOCATION_KEYS for key in entries)
    for key, choices in (("stapling", Stapling), ("revoked", Revoked)):
        if key in entries:
            value = _word(entries[key][1], reader, f"{where}.{key}", choices)
            ok = ok and value is not None
            values[key] = value
    return RevocationRules(**values) if ok else None


def resolve_revocation(value: Any, context: Context, messages: list[PolicyMessage]) -> RevocationRules | None:
    """`off` -> no value, so a rule's `off` also drops the defaults' rules for its hosts."""
    if isinstance(value, RevocationRules) and not value.asks:
        return None
    return value


_STAPLING = {
    "enum": [str(s) for s in Stapling],
    "description": "off (default): no stapled response is asked for; report: ask, record a missing or unusable one; "
    "require: ask, and refuse the server without a current, good response signed by its CA (recorded under "
    "mode: report).",
}

REVOCATION: Section[RevocationRules] = register(
    Section(
        name="revocation",
        parse=parse_revocation,
        resolve=resolve_revocation,
        schema={"$ref": "#/$defs/revocation"},
        defs={
            "revocation": {
                "description": "OCSP stapling: tlsgate asks the upstream for its CA's stapled OCSP response and checks "
                "it (certID, signature by the CA or its delegated responder, freshness); it never fetches one itself. "
                "A word sets `stapling`. A rule's revocation section replaces the default's whole.",
                "oneOf": [
                    {**_STAPLING, "enum": [*_STAPLING["enum"], False]},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "stapling": {**_STAPLING, "enum": [*_STAPLING["enum"], False], "default": "report"},
                            "revoked": {
                                "enum": [str(r) for r in Revoked],
                                "default": "block",
                                "description": "What a stapled, authentic `revoked` answer does: block (refused under "
                                "mode: enforce, recorded under mode: report) or report (always recorded, never refused).",
                            },
                        },
                    },
                ],
            }
        },
    )
)
