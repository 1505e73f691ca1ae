"""How bad a finding is: the one vocabulary every layer shares.

Checks grade their issues with it, the findings file validates against it,
and `tlsgate report` ranks and gates by it. Defined once, here at the bottom
of the layers, so the three can never drift apart (a word added in one and
not the others once meant a finding the writer accepted and the reader did
not rank).
"""

from __future__ import annotations

import enum


class Severity(enum.StrEnum):
    """Ordered from least to most severe; the members are plain strings where they are written."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITIES: tuple[str, ...] = tuple(severity.value for severity in Severity)
RANK: dict[str, int] = {name: index for index, name in enumerate(SEVERITIES)}
GATE_LEVELS: tuple[str, ...] = SEVERITIES[1:]  # `--fail-on info` would fail on every passed probe: not offered


def fails(action: str, severity: str, threshold: int) -> bool:
    """The gate, the same for `report`, `diff` and `run --fail-on`: tlsgate blocked it, or it is at least
    `threshold` severe. A blocked request is one the app made against the policy; a probe the app refused
    (`passed`) is the app doing right and never fails."""
    if action == "passed":
        return False  # and a network fault ("failed") fails only by severity: it is not the app's doing
    return action == "blocked" or RANK.get(severity, 0) >= threshold
