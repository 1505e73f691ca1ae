"""`timeouts:` how long tlsgate waits for one host's upstream in each phase, where the command line's options differ.

The options (`tlsgate_connect_timeout`, ...) bound every upstream; a host whose
server is slow by design (a long-polling API) or whose app gives up early (a
phone's 10 s read timeout) gets its own numbers here. Unlike other sections, a
rule's `timeouts:` overrides the defaults' key by key: a rule that says only
`response_head: 300` keeps the connect limit it would have had. Each value
keeps where it was written, so a 504 can say which line decided it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.model import Location
from tlsgate.policy.sections.base import Context, Section, register

TIMEOUT_KEYS = ("connect", "handshake", "response_head", "response_idle")
MIN_SECONDS = 1
MAX_SECONDS = 86400  # a day: the options' own bounds, so a policy can say nothing the command line could not
_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|ms|m|min|minutes?)\s*$", re.I)

_MEANING = {
    "connect": "from the TCP connect to the server's answer",
    "handshake": "for the whole TLS handshake with the server",
    "response_head": "from the end of the app's request to the complete response head",
    "response_idle": "without progress on the response body",
}


@dataclass(frozen=True)
class Timeout:
    seconds: float
    location: Location  # the key's line: what a finding names as the limit's source


@dataclass(frozen=True)
class TimeoutRules:
    """One host's limits; None where no `timeouts:` block that applies sets the key (the option decides)."""

    connect: Timeout | None = None
    handshake: Timeout | None = None
    response_head: Timeout | None = None
    response_idle: Timeout | None = None

    def get(self, key: str) -> Timeout | None:
        value = getattr(self, key, None)
        return value if isinstance(value, Timeout) else None


def seconds_value(node: yaml.Node, reader: yn.Reader, what: str) -> float | None:
    """A number of seconds from MIN_SECONDS to MAX_SECONDS, or a located error saying what to write instead."""
    value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    bounds = f"{MIN_SECONDS} to {MAX_SECONDS}"
    if isinstance(value, str):
        unit = _WITH_UNIT.match(value)
        hint = f" (write {unit.group(1)}: the unit is always seconds)" if unit else ""
        reader.error(node, f"{what} must be a number of seconds ({bounds}), not the text {value[:40]!r}{hint}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        reader.error(node, f"{what} must be a number of seconds ({bounds}), not {yn.type_name(node)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        reader.error(node, f"{what} must be a finite number of seconds ({bounds}), not {node.value!r}")
        return None
    if value < MIN_SECONDS:
        never = " (there is no 'never' or 'off': 0 or less would fail every server)" if value <= 0 else ""
        reader.error(node, f"{what} must be at least {MIN_SECONDS} second, not {_shown(value)}{never}")
        return None
    if value > MAX_SECONDS:
        reader.error(node, f"{what} must be at most {MAX_SECONDS} seconds (a day), not {_shown(value)}")
        return None
    return float(value)


def _shown(value: int | float) -> str:
    """A number as a message quotes it; an integer too long for a float (or a screen) by its length."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"a {len(str(abs(value)))}-digit {'negative ' if value < 0 else ''}number"
    return f"{value:g}"


def parse_timeouts(node: yaml.Node, reader: yn.Reader, context: Context) -> TimeoutRules | None:
    entries = yn.section(node, reader, "timeouts", TIMEOUT_KEYS, "timeouts (seconds per phase)")
    if entries is None:
        return None
    values: dict[str, Timeout] = {}
    for key in TIMEOUT_KEYS:
        if key in entries:
            key_node, value_node = entries[key]
            seconds = seconds_value(value_node, reader, f"{context.where}.timeouts.{key}")
            if seconds is not None:
                values[key] = Timeout(seconds, reader.loc(key_node))
    return TimeoutRules(**values)


def merge_timeouts(defaults: Any, rule: Any) -> Any:
    """The rule's keys over the defaults' (a rule names only the phase it changes)."""
    if not isinstance(defaults, TimeoutRules) or not isinstance(rule, TimeoutRules):
        return rule
    return replace(defaults, **{f.name: getattr(rule, f.name) for f in fields(rule) if getattr(rule, f.name) is not None})


_SECONDS_SCHEMA = {"type": "number", "minimum": MIN_SECONDS, "maximum": MAX_SECONDS}

TIMEOUTS: Section[TimeoutRules] = register(
    Section(
        name="timeouts",
        parse=parse_timeouts,
        merge=merge_timeouts,
        schema={
            "type": "object",
            "additionalProperties": False,
            "description": "Seconds tlsgate waits for this host's upstream in each phase before it answers 504; unset "
            "keys keep the command line's options (tlsgate_connect_timeout, tlsgate_tls_handshake_timeout, "
            "tlsgate_response_head_timeout, tlsgate_response_idle_timeout). A rule overrides the defaults' keys one "
            "by one.",
            "properties": {key: {**_SECONDS_SCHEMA, "description": f"Seconds {_MEANING[key]}."} for key in TIMEOUT_KEYS},
        },
    )
)
