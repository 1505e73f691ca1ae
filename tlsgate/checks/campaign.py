"""A device's probe campaign, summed up: which probes ran, what the app did with each, and why the rest never ran.

Per-connection probe findings say what one connection proved; a tester running
a catalogue over an app's UI test asks the question the other way round: of
everything the policy asked for, what is known about this device now, and what
is still untested (and why)? `Campaign` keeps that per device in bounded memory
and `summary` turns it into one `client_probe/campaign_summary` issue.

Memory: at most `devices` devices (1024 by default; the least recently seen
is forgotten) x the kinds in the policy (18 exist) x one small `KindTally`
(four counters, the skip reasons, at most
`HOSTS_KEPT` host names per result). Measured with tracemalloc: 1024 devices x 18 kinds over six hosts each
take 15 MB (0.8 KB per device and kind); 47 MB at worst, with every host name 253 bytes long and distinct.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.probes import PROBE_SEVERITY
from tlsgate.checks.protocol_probes import SEVERITIES as PROTOCOL_SEVERITIES
from tlsgate.policy import Policy
from tlsgate.policy.sections.client import CLIENT
from tlsgate.tls.campaign import (
    ACCEPTED,
    HOSTS_KEPT,
    INCONCLUSIVE,
    NO_CONNECTION,
    NOT_APPLICABLE,
    NOT_ITS_TURN,
    NOT_RUN,
    QUIC_ONLY,
    REASONS,
    REFUSED,
    RESULTS,
    UNSERVABLE,
)
from tlsgate.tls.recent import Recent
from tlsgate.tls.severity import RANK

__all__ = [
    "ACCEPTED",
    "HOSTS_KEPT",
    "INCONCLUSIVE",
    "NOT_APPLICABLE",
    "NOT_ITS_TURN",
    "NOT_RUN",
    "NO_CONNECTION",
    "QUIC_ONLY",
    "REASONS",
    "REFUSED",
    "RESULTS",
    "UNSERVABLE",
    "Campaign",
    "KindTally",
    "device_kinds",
    "policy_kinds",
    "summary",
]


@dataclass
class KindTally:
    offered: int = 0
    refused: int = 0
    accepted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> connections
    hosts: dict[str, list[str]] = field(default_factory=dict)  # result -> up to HOSTS_KEPT hosts

    def note_host(self, result: str, host: str) -> None:
        hosts = self.hosts.setdefault(result, [])
        if host not in hosts and len(hosts) < HOSTS_KEPT:
            hosts.append(host)

    @property
    def result(self) -> str:
        if self.accepted:
            return ACCEPTED
        if self.refused:
            return REFUSED
        return INCONCLUSIVE if self.offered else NOT_RUN

    @property
    def reason(self) -> str | None:
        if self.offered:
            return None
        return next((r for r in REASONS if r in self.skipped), NO_CONNECTION)


class Campaign:
    """Every device's tallies, fed by the client audit as connections are probed, skipped and answered."""

    def __init__(self, devices: int = 1024) -> None:
        self.devices = devices
        self._tallies: Recent[str, dict[str, KindTally]] = Recent(devices)

    def _tally(self, device: str, kind: str) -> KindTally:
        kinds = self._tallies.get(device)
        if kinds is None:
            kinds = {}
            self._tallies.put(device, kinds)
        return kinds.setdefault(kind, KindTally())

    def offered(self, device: str, host: str, kind: str) -> None:
        tally = self._tally(device, kind)
        tally.offered += 1
        tally.note_host("offered", host)

    def answered(self, device: str, host: str, kind: str, accepted: bool) -> None:
        tally = self._tally(device, kind)
        if accepted:
            tally.accepted += 1
        else:
            tally.refused += 1
        tally.note_host(ACCEPTED if accepted else REFUSED, host)

    def skipped(self, device: str, kinds: Iterable[str], reason: str) -> None:
        for kind in kinds:
            tally = self._tally(device, kind)
            tally.skipped[reason] = tally.skipped.get(reason, 0) + 1

    def withdrawn(self, device: str, kind: str) -> None:
        """An offer that was never made after all (the probe could not be served)."""
        tally = self._tally(device, kind)
        tally.offered = max(0, tally.offered - 1)
        tally.skipped[UNSERVABLE] = tally.skipped.get(UNSERVABLE, 0) + 1

    def device_names(self) -> tuple[str, ...]:
        return tuple(self._tallies)

    def tallies(self, device: str) -> dict[str, KindTally]:
        return dict(self._tallies.peek(device) or {})


def policy_kinds(policy: Policy) -> tuple[str, ...]:
    """Every probe kind the policy asks for anywhere (defaults, then rules in file order), each once."""
    found: dict[str, None] = dict.fromkeys(CLIENT.of(policy.defaults).probes)
    for rule in policy.rules:
        rules = rule.overrides.get("client")
        if rules is not None:
            found.update(dict.fromkeys(rules.probes))
    return tuple(found)


def device_kinds(policy: Policy, device: str) -> tuple[str, ...]:
    """The kinds a device's campaign is judged against: its own list when its `devices:` entry gives one (it
    replaces the rules' everywhere), else every kind the policy asks for anywhere."""
    own = policy.probes_of(device)
    if own is not None and own.probes is not None:
        return own.probes
    return policy_kinds(policy)


def accepted_severity(kind: str) -> Severity:
    """What the app's accepting `kind` weighs, as its own finding said: the protocol probes grade theirs apart from
    the certificate probes, and any kind neither lists is critical."""
    return PROTOCOL_SEVERITIES.get(kind) or PROBE_SEVERITY.get(kind, Severity.CRITICAL)


def summary(device: str, tallies: dict[str, KindTally], kinds: Iterable[str]) -> Issue:
    """The campaign's one finding for a device: blocked (at the worst accepted kind's severity) if the app accepted
    any probe, else passed; the evidence lists every kind with its result, counts and (not run) reason."""
    wanted = [*dict.fromkeys([*kinds, *tallies])]
    rows: list[dict[str, Any]] = []
    by_result: dict[str, list[str]] = {result: [] for result in RESULTS}
    for kind in wanted:
        tally = tallies.get(kind, KindTally())
        result = tally.result
        by_result[result].append(kind)
        row: dict[str, Any] = {"kind": kind, "result": result, "offered": tally.offered}
        if tally.refused:
            row["refused"] = tally.refused
        if tally.accepted:
            row["accepted"] = tally.accepted
        if result == NOT_RUN:
            row["reason"] = tally.reason
        hosts = tally.hosts.get(ACCEPTED if result == ACCEPTED else REFUSED if result == REFUSED else "offered")
        if hosts and result != NOT_RUN:  # a withdrawn offer's host is no place the probe ran
            row["hosts"] = list(hosts)
        rows.append(row)
    counts = {result: len(names) for result, names in by_result.items()}
    said = ", ".join(f"{n} {result.replace('_', ' ')}" for result, n in counts.items() if n) or "no probes asked for"
    accepted = by_result[ACCEPTED]
    evidence = {"kind": "campaign_summary", "device": device, "counts": counts, "probes": rows}
    if accepted:
        worst = max((accepted_severity(kind) for kind in accepted), key=lambda s: RANK[s])
        return Issue(
            Check.CLIENT_PROBE,
            "campaign_summary",
            Effect.ALWAYS,
            worst,
            f"probe campaign for {device}: {said}; the app accepted {', '.join(accepted)}",
            evidence,
            "each accepted kind has its own client_probe finding with what to change",
        )
    untested = by_result[NOT_RUN] + by_result[INCONCLUSIVE]
    tail = f"; still untested: {', '.join(untested)}" if untested else ""
    return Issue(
        Check.CLIENT_PROBE,
        "campaign_summary",
        Effect.PASSED,
        Severity.INFO,
        f"probe campaign for {device}: {said}{tail}",
        evidence,
    )
