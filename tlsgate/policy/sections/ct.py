"""`ct:` Certificate Transparency: how many SCTs a server's certificate must embed, from whom, and how checked.

A section of its own, not a key of `tls:` or `certificates:`: a rule's value
replaces those sections whole, so a rule that lowers `tls.min_version` for a
legacy host would silently drop its CT requirement, and CT is off unless asked
for while those two always apply. `ct: off` in a rule drops a requirement the
defaults set (a private-CA host has no SCTs to show).

`ct_log_list:` (top level, once per policy) names a newer log list than the
one tlsgate ships. It is policy, not a proxy option: which logs to trust is
part of the verdict, a reload picks up a new list, and a list that cannot be
used is a located error that keeps the old policy in force.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import PolicyMessage
from tlsgate.policy.sections.base import Context, Section, boolean, register
from tlsgate.tls.ctlogs import LogList, LogListError, load_log_list

CT_KEYS = ("min_scts", "distinct_operators", "verify")
CT_OFF = "off"
BY_LIFETIME = "by_lifetime"
MAX_SCTS = 10


@dataclass(frozen=True)
class CtRules:
    """`min_scts` None means by lifetime: 2 SCTs for a certificate valid 180 days or less, 3 beyond (Chrome, Apple)."""

    min_scts: int | None = 2
    distinct_operators: bool = True  # the counted SCTs come from logs of at least two operators
    verify: bool = True  # check each SCT's signature against its log's key from the log list
    logs: LogList | None = field(default=None, compare=False, repr=False)  # `ct_log_list:`; None: the shipped list


def parse_ct(node: yaml.Node, reader: yn.Reader, context: Context) -> CtRules | str | None:
    if isinstance(node, yaml.ScalarNode):
        value = yn.scalar(node)
        if value is False or value == CT_OFF:
            return CT_OFF
        reader.error(node, f"{context.where}.ct must be off or a mapping of {', '.join(CT_KEYS)}")
        return None
    entries = yn.section(node, reader, "ct", CT_KEYS)
    if entries is None:
        return None
    values: dict[str, Any] = {}
    if "min_scts" in entries:
        target = entries["min_scts"][1]
        raw = yn.scalar(target) if isinstance(target, yaml.ScalarNode) else None
        if raw == BY_LIFETIME:
            values["min_scts"] = None
        elif type(raw) is int and 1 <= raw <= MAX_SCTS:
            values["min_scts"] = raw
        else:
            reader.error(target, f"ct.min_scts must be a whole number from 1 to {MAX_SCTS}, or {BY_LIFETIME}")
            return None
    for key in ("distinct_operators", "verify"):
        if key in entries:
            flag = boolean(entries[key][1], reader, f"ct.{key}")
            if flag is None:
                return None
            values[key] = flag
    rules = CtRules(**values)
    if rules.distinct_operators and rules.min_scts == 1:
        reader.error(
            entries["min_scts"][1],
            "ct.min_scts: 1 cannot come from two operators; set min_scts to 2 or more, or distinct_operators: false",
        )
        return None
    return rules


def resolve_ct(value: Any, context: Context, messages: list[PolicyMessage]) -> CtRules | None:
    """`off` becomes no requirement, so a rule's `ct: off` overrides what the defaults ask; every rule gets the
    policy's `ct_log_list`, read once, whichever file set it."""
    if value == CT_OFF or value is None:
        return None
    return replace(value, logs=context.table("ct_log_list").get("list"))


def parse_ct_log_list(node: yaml.Node, reader: yn.Reader, context: Context) -> None:
    """Read the named list now, so a missing or broken one refuses the policy at its line, not a server later."""
    path = yn.string(node, reader, "ct_log_list")
    if path is None:
        return
    known = context.table("ct_log_list")
    if "where" in known:
        reader.error(node, f"ct_log_list is already set at {known['where']}; set it in one file only")
        return
    try:
        known["list"] = load_log_list(path)
    except LogListError as exc:
        reader.error(node, str(exc))
        return
    known["where"] = reader.loc(node)


CT: Section[CtRules] = register(
    Section(
        name="ct",
        parse=parse_ct,
        resolve=resolve_ct,
        schema={
            "oneOf": [
                {"const": CT_OFF},
                {"const": False},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "min_scts": {
                            "oneOf": [
                                {"type": "integer", "minimum": 1, "maximum": MAX_SCTS},
                                {"const": BY_LIFETIME},
                            ],
                            "default": CtRules.min_scts,
                            "description": "SCTs from distinct logs the list trusts; by_lifetime: 2 for a certificate "
                            "valid 180 days or less, 3 beyond (Chrome's and Apple's count).",
                        },
                        "distinct_operators": {
                            "type": "boolean",
                            "default": CtRules.distinct_operators,
                            "description": "The counted SCTs must come from logs of at least two operators.",
                        },
                        "verify": {
                            "type": "boolean",
                            "default": CtRules.verify,
                            "description": "Check each SCT's signature with its log's key (false: count SCTs by log ID).",
                        },
                    },
                },
            ],
            "description": "Certificate Transparency: embedded SCTs the server's certificate must carry, or off.",
        },
    )
)

CT_LOG_LIST: Section[Any] = register(
    Section(
        name="ct_log_list",
        parse=parse_ct_log_list,
        top_level=True,
        schema={
            "type": "string",
            "description": "A CT log list in Google's v3 log_list.json schema (path absolute or relative to where tlsgate "
            "runs) that ct: checks SCTs against instead of the copy tlsgate ships.",
        },
    )
)
