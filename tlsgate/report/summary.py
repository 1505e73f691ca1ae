"""Folding a stream of findings into a bounded summary every format renders from.

A device-farm run can log a million findings, mostly the same few problems
over and over. Nothing here grows with the number of lines: counters, one
group per finding identity (capped), one row per host (capped), a timeline
whose bins widen as the run gets longer, and at most a few example findings
per group. Whatever a cap leaves out is counted, so every report can say so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tlsgate.report.model import RANK, SEVERITIES, Record, rule_key
from tlsgate.tls import mastg
from tlsgate.tls.campaign import HOSTS_KEPT, REASONS, RESULTS
from tlsgate.tls.probes import PROBE_KINDS

EXAMPLES_PER_GROUP = 50  # findings kept in full per group, for evidence in HTML and JUnit
EXAMPLE_BUDGET = 5_000  # across all groups; past it each group keeps only its worst finding
MAX_GROUPS = 20_000
MAX_HOSTS = 10_000
MAX_TIMELINE_BINS = 2_048
NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
BOUNDED_SET = 8  # ports, devices, versions... listed per host
MAX_VIEW_DEVICES = 1_000  # devices with a MASVS-NETWORK view; the rest are counted
LAST_SECOND = 253_000_000_000  # late in year 9987: a timeline bin after it could not be labelled with a date


def identity(record: Record, who: str | None = None) -> tuple[str, str, str, str, str]:
    """What makes two findings "the same problem" across runs: never times, ports or client ports, and the
    deciding rule by file name and line only (`rule_key`), so runs from other directories or machines match."""
    return (record.check, record.kind or "", record.host_key, record.rule_key, who or record.who)


def _add_bounded(items: list[str], value: str | None) -> None:
    if value and len(items) < BOUNDED_SET and value not in items:
        items.append(value)


@dataclass
class Group:
    """Every finding with one identity: counts, the worst, and a few kept in full."""

    check: str
    kind: str
    host: str
    rule: str
    who: str
    count: int = 0
    failing: int = 0
    worst: Record | None = None
    by_action: Counter[str] = field(default_factory=Counter)
    examples: list[Record] = field(default_factory=list)
    first_time: str | None = None
    last_time: str | None = None

    @property
    def rule_id(self) -> str:
        return f"{self.check}/{self.kind}" if self.kind else self.check

    @property
    def rule_key(self) -> str:
        return rule_key(self.rule)

    @property
    def severity(self) -> str:
        return self.worst.severity if self.worst else "info"

    @property
    def omitted(self) -> int:
        return self.count - len(self.examples)


@dataclass
class HostRow:
    host: str
    count: int = 0
    failing: int = 0
    ports: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    suites: list[str] = field(default_factory=list)
    pins: str = ""
    devices: list[str] = field(default_factory=list)
    worst: Record | None = None


PIN_WORDS = {"pin_mismatch": "MISMATCH", "pin_set_expired": "pin set expired"}


@dataclass
class MastgTally:
    """One device's evidence for one MASTG test: findings that show it failed or passed, and a few of them."""

    failed: int = 0
    passed: int = 0
    examples: list[str] = field(default_factory=list)  # `check/kind on host`, the first few


@dataclass(frozen=True)
class MastgStatus:
    """A MASTG test's line in a device's MASVS-NETWORK view."""

    test: mastg.MastgTest
    status: str  # failed | passed | no failure seen | not exercised
    failed: int
    passed: int
    why: str  # tlsgate's words only: what the findings in `examples` (from the file) showed, or what exercises it
    examples: tuple[str, ...] = ()  # `check/kind on host` of the first few findings that evidence it

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.test.id,
            "title": self.test.title,
            "platform": self.test.platform,
            "masvs": self.test.masvs,
            "url": self.test.url,
            "status": self.status,
            "failed": self.failed,
            "passed": self.passed,
            "why": self.why,
            "examples": list(self.examples),
        }


# The tests a device's view lists: those tlsgate can see pass or fail on the wire, by control, then id.
VIEW_TESTS = sorted((t for t in mastg.TESTS.values() if t.wire), key=lambda t: (t.masvs, t.id))


def _status(test: mastg.MastgTest, tally: MastgTally | None) -> MastgStatus:
    if tally is not None and tally.failed:
        why = f"{tally.failed} finding(s) show the app failing it" + (f", {tally.passed} passing" if tally.passed else "")
        return MastgStatus(test, "failed", tally.failed, tally.passed, why, tuple(tally.examples))
    if tally is not None and tally.passed:
        return MastgStatus(
            test, "passed", 0, tally.passed, f"{tally.passed} finding(s) show the app passing it", tuple(tally.examples)
        )
    if test.wire == "passive":
        why = "this device's traffic was judged and no finding fails it; " + test.needs
        return MastgStatus(test, "no failure seen", 0, 0, why)
    return MastgStatus(test, "not exercised", 0, 0, test.needs)


def campaign_rows(probes: Any) -> list[dict[str, Any]]:
    """A summary's rows as read back from a file, which is input like any other: only known kinds, results and
    reasons, numbers as numbers, at most HOSTS_KEPT short host names (a newer tlsgate's kinds are left out)."""
    rows: list[dict[str, Any]] = []
    for item in probes[: 2 * len(PROBE_KINDS)] if isinstance(probes, list) else ():
        if not isinstance(item, dict) or item.get("kind") not in PROBE_KINDS or item.get("result") not in RESULTS:
            continue
        if any(row["kind"] == item["kind"] for row in rows):
            continue
        offered = item.get("offered")
        reason = item.get("reason")
        hosts = item.get("hosts")
        rows.append(
            {
                "kind": item["kind"],
                "result": item["result"],
                "offered": offered if isinstance(offered, int) and not isinstance(offered, bool) and offered >= 0 else 0,
                "reason": reason if isinstance(reason, str) and reason in REASONS else None,
                "why": REASONS[reason] if isinstance(reason, str) and reason in REASONS else "",
                "hosts": [h[:253] for h in hosts if isinstance(h, str)][:HOSTS_KEPT] if isinstance(hosts, list) else [],
            }
        )
    return rows


class Summary:
    """Everything the reports say about one or more findings files, built in one pass."""

    def __init__(self, threshold: int, gate: mastg.Gate | None = None) -> None:
        self.threshold = threshold
        # What fails: by default blocked or >= threshold; `--fail-on` may name MASVS controls or MASTG tests.
        self.gate = gate if gate is not None else mastg.Gate(threshold)
        self.masvs: dict[str, dict[str, MastgTally]] = {}  # device -> MASTG test id -> its evidence
        self.masvs_dropped = 0  # findings of devices beyond MAX_VIEW_DEVICES
        self.campaigns: dict[str, list[dict[str, Any]]] = {}  # device -> its latest probe campaign summary's rows
        self.total = 0
        self.failing = 0
        self.by_severity: Counter[str] = Counter({name: 0 for name in SEVERITIES})
        self.by_action: Counter[str] = Counter()
        self.by_check: Counter[str] = Counter()
        self.by_who: Counter[str] = Counter()
        self.who_severity: dict[str, Counter[str]] = {}
        self.groups: dict[tuple[str, str, str, str, str], Group] = {}
        self.groups_dropped = 0  # findings whose group did not fit under MAX_GROUPS
        self.hosts: dict[str, HostRow] = {}
        self.hosts_dropped = 0
        self.examples_kept = 0
        self.bin_seconds = 1
        self.bins: dict[int, Counter[str]] = {}
        self.first_time: str | None = None
        self.last_time: str | None = None
        self.sources: list[str] = []
        self._last_head = self._last_zone = ""
        self._last_second: int | None = None

    # -- folding ---------------------------------------------------------------------------------

    def add_all(self, records: Iterable[Record]) -> Summary:
        for record in records:
            self.add(record)
        return self

    def add(self, record: Record) -> None:
        """Every count is of occurrences: a follow-up line stands for `record.occurrences` of them."""
        times = record.occurrences
        self.total += times
        evidenced = record.evidenced
        fails = self.gate.fails(record.action, record.severity, evidenced) * times
        self.failing += fails
        self.by_severity[record.severity] += times
        self.by_action[record.action] += times
        self.by_check[record.check] += times
        who = record.who
        self.by_who[who] += times
        per_who = self.who_severity.get(who)
        if per_who is None:
            per_who = self.who_severity[who] = Counter()
        per_who[record.severity] += times
        self._masvs(record, evidenced, who)
        self._group(record, fails, who)
        if record.check == "client_probe" and record.kind == "campaign_summary":
            self._campaign(record)  # a device's, over every host: no row of its own in the hosts table
        else:
            self._host(record, fails, who)
        self._time(record)

    def _masvs(self, record: Record, evidenced: mastg.Refs, who: str) -> None:
        tallies = self.masvs.get(who)
        if tallies is None:
            if len(self.masvs) >= MAX_VIEW_DEVICES:
                self.masvs_dropped += record.occurrences
                return
            tallies = self.masvs[who] = {}  # a device seen is listed, even with nothing evidenced
        for test in evidenced.tests:
            tally = tallies.get(test)
            if tally is None:
                tally = tallies[test] = MastgTally()
            if evidenced.result == "pass":
                tally.passed += record.occurrences
            else:
                tally.failed += record.occurrences
            if len(tally.examples) < BOUNDED_SET:  # the text is built only while there is room for it
                _add_bounded(tally.examples, f"{record.rule_id} on {record.host}")

    def _campaign(self, record: Record) -> None:
        """The latest summary per device wins (a later run, or a restart, knows more). The device is the policy's
        name, else the address the summary names (an unnamed device's summary carries no fingerprint)."""
        named = record.evidence.get("device")
        who = record.device or (named[:64] if isinstance(named, str) and named else record.who)
        if who not in self.campaigns and len(self.campaigns) >= MAX_VIEW_DEVICES:
            return
        self.campaigns[who] = campaign_rows(record.evidence.get("probes"))

    def _group(self, record: Record, fails: int, who: str) -> None:
        key = identity(record, who)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                self.groups_dropped += 1
                return
            # Shown with the first finding's rule reference as written; matched by its key.
            group = self.groups[key] = Group(key[0], key[1], key[2], record.rule, key[4])
        group.count += record.occurrences
        group.failing += fails
        group.by_action[record.action] += record.occurrences
        if group.worst is None or record.rank > group.worst.rank:
            group.worst = record
        if len(group.examples) < EXAMPLES_PER_GROUP and (not group.examples or self.examples_kept < EXAMPLE_BUDGET):
            group.examples.append(record)
            self.examples_kept += 1
        if record.time:
            group.first_time = min(group.first_time or record.time, record.time)
            group.last_time = max(group.last_time or record.time, record.time)

    def _host(self, record: Record, fails: int, who: str) -> None:
        row = self.hosts.get(record.host)
        if row is None:
            if len(self.hosts) >= MAX_HOSTS:
                self.hosts_dropped += 1
                return
            row = self.hosts[record.host] = HostRow(record.host)
        row.count += record.occurrences
        row.failing += fails
        evidence = record.evidence
        _add_bounded(row.ports, str(record.port) if record.port else None)
        _add_bounded(row.transports, record.transport)
        version = evidence.get("negotiated_version") or evidence.get("best_offered_version")
        _add_bounded(row.versions, version if isinstance(version, str) else None)
        suite = evidence.get("negotiated_suite")
        _add_bounded(row.suites, suite if isinstance(suite, str) else None)
        _add_bounded(row.devices, who)
        if record.kind in PIN_WORDS:
            row.pins = PIN_WORDS[record.kind] if row.pins != "MISMATCH" else row.pins
        elif evidence.get("pin_set") and not row.pins:
            row.pins = f"pinned ({evidence['pin_set']})"
        if row.worst is None or record.rank > row.worst.rank:
            row.worst = record

    def _time(self, record: Record) -> None:
        if not record.time:
            return
        second = self._second_of(record.time)
        if second is None:
            return
        if self.first_time is None or record.time < self.first_time:
            self.first_time = record.time
        if self.last_time is None or record.time > self.last_time:
            self.last_time = record.time
        key = second - second % self.bin_seconds
        counts = self.bins.get(key)
        if counts is None:
            counts = self.bins[key] = Counter()
        counts[record.severity] += record.occurrences
        if len(self.bins) > MAX_TIMELINE_BINS:
            self._widen()

    def _second_of(self, text: str) -> int | None:
        """Epoch second of an ISO time; findings come in bursts within one second, so the last parse is reused."""
        head, zone = text[:19], text[19:]
        if zone.startswith("."):
            zone = zone[1:].lstrip("0123456789")
        if head == self._last_head and zone == self._last_zone:
            return self._last_second
        try:
            second = int(datetime.fromisoformat(head + zone).timestamp())
        except (ValueError, OverflowError, OSError):  # not a time, or one the platform cannot convert
            return None
        if not 0 <= second <= LAST_SECOND:
            return None  # before 1970 or near year 9999: not a time tlsgate wrote; kept as text, not charted
        self._last_head, self._last_zone, self._last_second = head, zone, second
        return second

    def _widen(self) -> None:
        """Halve the timeline's resolution, so a long run keeps the same number of bins as a short one."""
        self.bin_seconds *= 2
        merged: dict[int, Counter[str]] = {}
        for key, counts in self.bins.items():
            merged.setdefault(key - key % self.bin_seconds, Counter()).update(counts)
        self.bins = merged

    # -- reading ---------------------------------------------------------------------------------

    @property
    def passed(self) -> bool:
        return self.failing == 0

    @property
    def threshold_name(self) -> str:
        return SEVERITIES[self.threshold]

    @property
    def gate_words(self) -> str:
        """What fails, as every format says it: `blocked or ≥ high`, and any control or test named."""
        if not self.gate.ids:
            return f"blocked or ≥ {self.threshold_name}"
        return self.gate.describe().replace(">=", "≥")

    @property
    def fail_on(self) -> str:
        """`--fail-on` as given in effect: the severity's name alone when only a severity gates (as before)."""
        if not self.gate.ids:
            return self.threshold_name
        terms = [SEVERITIES[self.gate.threshold]] if self.gate.threshold is not None else []
        return ",".join(terms + sorted(self.gate.ids))

    def masvs_view(self) -> dict[str, list[MastgStatus]]:
        """Per device, each wire-testable MASTG test: failed, passed, no failure seen (a passive test), or not
        exercised, with why. Devices in the order of their finding counts."""
        return {
            who: [_status(test, self.masvs[who].get(test.id)) for test in VIEW_TESTS]
            for who in self.devices()
            if who in self.masvs
        }

    @property
    def worst_severity(self) -> str | None:
        present = [name for name in SEVERITIES if self.by_severity[name]]
        return present[-1] if present else None

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-RANK[g.severity], -g.failing, -g.count, g.rule_id, g.host, g.who))

    def sorted_hosts(self) -> list[HostRow]:
        return sorted(self.hosts.values(), key=lambda h: (-(h.worst.rank if h.worst else 0), -h.failing, -h.count, h.host))

    def devices(self) -> list[str]:
        return [who for who, _ in self.by_who.most_common()]

    def timeline(self, columns: int = 48) -> tuple[list[tuple[int, Counter[str]]], int]:
        """Up to `columns` bins of equal width from the first to the last finding: (start, counts) and the width in s."""
        if not self.bins:
            return [], 0
        start, end = min(self.bins), max(self.bins) + self.bin_seconds
        needed = max(self.bin_seconds, -(-(end - start) // columns))
        width = next((nice for nice in NICE_WIDTHS if nice >= needed), needed)
        out: dict[int, Counter[str]] = {}
        for key, counts in self.bins.items():
            out.setdefault(start + (key - start) // width * width, Counter()).update(counts)
        return [(key, out.get(key, Counter())) for key in range(start, end, width)], width

    def notes(self) -> list[str]:
        """What the caps left out, in words every format can print."""
        notes = []
        if self.groups_dropped:
            notes.append(f"{self.groups_dropped} finding(s) beyond {MAX_GROUPS} distinct problems are counted but not listed")
        if self.hosts_dropped:
            notes.append(f"{self.hosts_dropped} finding(s) on hosts beyond the first {MAX_HOSTS} are not in the host table")
        omitted = sum(g.omitted for g in self.groups.values())
        if omitted:
            notes.append(
                f"{omitted} repeated finding(s) are counted but not shown in full (at most {EXAMPLES_PER_GROUP} per problem)"
            )
        if self.masvs_dropped:
            notes.append(
                f"{self.masvs_dropped} finding(s) of devices beyond the first {MAX_VIEW_DEVICES} are not in the MASVS view"
            )
        return notes

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable report (`--format json`): totals, the verdict, and one entry per problem."""
        return {
            "verdict": "pass" if self.passed else "fail",
            "fail_on": self.fail_on,
            "total": self.total,
            "failing": self.failing,
            "by_severity": dict(self.by_severity),
            "by_action": dict(self.by_action),
            "by_check": dict(self.by_check.most_common()),
            "by_device": dict(self.by_who.most_common()),
            "first_time": self.first_time,
            "last_time": self.last_time,
            "problems": [
                {
                    "rule_id": g.rule_id,
                    "check": g.check,
                    "kind": g.kind or None,
                    "host": g.host,
                    "rule": g.rule,
                    "device": g.who,
                    "severity": g.severity,
                    "count": g.count,
                    "failing": g.failing,
                    "actions": dict(g.by_action),
                    "detail": g.worst.detail if g.worst else "",
                    "remedy": g.worst.remedy if g.worst else "",
                    "first_time": g.first_time,
                    "last_time": g.last_time,
                    "mastg": g.worst.evidenced.as_dict() if g.worst and g.worst.evidenced else None,
                }
                for g in self.sorted_groups()
            ],
            "hosts": [
                {
                    "host": h.host,
                    "count": h.count,
                    "failing": h.failing,
                    "ports": h.ports,
                    "transports": h.transports,
                    "tls_versions": h.versions,
                    "suites": h.suites,
                    "pins": h.pins or None,
                    "worst": h.worst.rule_id if h.worst else None,
                    "worst_severity": h.worst.severity if h.worst else None,
                }
                for h in self.sorted_hosts()
            ],
            "masvs_network": {
                "mapping": {"source": mastg.SOURCE},
                "devices": {who: [status.as_dict() for status in rows] for who, rows in self.masvs_view().items()},
            },
            "probe_campaigns": self.campaigns,
            "notes": self.notes(),
            "sources": self.sources,
        }
