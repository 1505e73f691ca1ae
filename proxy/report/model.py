"""Reading findings files one line at a time.

A findings file is written by a proxy that may have crashed mid-line, may be
an older tlsgate, or may be a newer one with fields this reader has never
seen; all of that is still a findings file and is read with a warning. A file
that is not findings at all (a policy, a JSON array, a log) must stop a CI job
with a clear message instead of producing a green "0 findings" report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")
RANK = {name: index for index, name in enumerate(SEVERITIES)}
GATE_LEVELS = SEVERITIES[1:]  # `--fail-on info` would fail on every passed probe: not offered

# Non-blank lines read before a file without a single finding is declared "not findings".
PROBE_WINDOW = 50
# Each distinct kind of problem is warned about this many times, then only counted.
WARNINGS_SHOWN = 3


def fails(action: str, severity: str, threshold: int) -> bool:
    """The gate, the same for `report`, `diff` and `run --fail-on`: tlsgate blocked it, or it is at least
    `threshold` severe. A blocked request is one the app made against the policy; a probe the app refused
    (`passed`) is the app doing right and never fails."""
    if action == "passed":
        return False  # and a network fault ("failed") fails only by severity: it is not the app's doing
    return action == "blocked" or RANK.get(severity, 0) >= threshold


class InputError(Exception):
    """The input cannot be reported on (missing, unreadable, not findings): exit code 2."""


@dataclass(slots=True)
class Record:
    check: str
    action: str
    severity: str
    host: str
    port: int | None
    client: str | None
    rule: str
    detail: str
    remedy: str
    device: str | None
    evidence: dict[str, Any]
    time: str | None
    occurrences: int = 1  # a follow-up line stands for this many more occurrences of the same problem

    @property
    def rank(self) -> int:
        return RANK[self.severity]

    @property
    def kind(self) -> str | None:
        kind = self.evidence.get("kind")
        return kind if isinstance(kind, str) and kind else None

    @property
    def rule_id(self) -> str:
        """`check/kind` (e.g. `pin/pin_mismatch`), or the check alone when the finding names no kind."""
        return f"{self.check}/{self.kind}" if self.kind else self.check

    @property
    def fingerprint(self) -> str | None:
        for key in ("ja4", "ja3"):
            value = self.evidence.get(key)
            if isinstance(value, str) and value:
                return f"{key}:{value}"
        return None

    @property
    def client_address(self) -> str | None:
        if not self.client:
            return None
        address, sep, port = self.client.rpartition(":")
        if not sep or not port.isdigit():
            return self.client
        return address.strip("[]")

    @property
    def who(self) -> str:
        """The device under test: its policy name, else the app's TLS fingerprint, else its address (never the port)."""
        return self.device or self.fingerprint or self.client_address or "unknown"

    @property
    def rule_location(self) -> tuple[str, int | None]:
        path, sep, line = self.rule.rpartition(":")
        if sep and line.isdigit():
            return path, int(line)
        return self.rule, None

    @property
    def host_key(self) -> str:
        """The rule's host pattern when the finding carries it (newer tlsgate), else the host itself."""
        pattern = self.evidence.get("host_pattern")
        return pattern if isinstance(pattern, str) and pattern else self.host

    @property
    def transport(self) -> str:
        protocol = self.evidence.get("protocol")
        if protocol in ("http", "ws") and self.check == "cleartext":
            return f"cleartext {protocol}"
        if self.evidence.get("negotiated_version"):
            return "TLS"
        if self.evidence.get("sni") is not None or self.evidence.get("best_offered_version"):
            return "TLS (client hello)"
        return "TLS" if self.check != "cleartext" else "cleartext"

    def fails(self, threshold: int) -> bool:
        return fails(self.action, self.severity, threshold)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def parse(obj: Any) -> tuple[Record | None, str | None]:
    """A record from one decoded line, and why it is odd (older format, not a finding), if it is."""
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    check, host = obj.get("check"), obj.get("host")
    if not isinstance(check, str) or not check or not isinstance(host, str):
        return None, "a JSON object without the 'check' and 'host' of a finding"
    note = None
    severity = obj.get("severity")
    if severity not in RANK:
        note = f"severity {severity!r} is not one of {', '.join(SEVERITIES)} (older tlsgate?); read as 'info'"
        severity = "info"
    action = obj.get("action")
    if action not in ("blocked", "reported", "passed", "failed"):
        note = note or f"action {action!r} is not blocked/reported/passed/failed (older tlsgate?); read as 'reported'"
        action = "reported"
    port = obj.get("port")
    evidence = obj.get("evidence")
    rule, detail, remedy = obj.get("rule"), obj.get("detail"), obj.get("remedy")
    device, client, time = obj.get("device"), obj.get("client"), obj.get("time")
    record = Record(
        check=check,
        action=action,
        severity=severity,
        host=host,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        client=client if isinstance(client, str) else None,
        device=device if isinstance(device, str) and device else None,
        evidence=evidence if isinstance(evidence, dict) else {},
        time=time if isinstance(time, str) else None,
        rule=rule if isinstance(rule, str) else "",
        detail=detail if isinstance(detail, str) else "",
        remedy=remedy if isinstance(remedy, str) else "",
        occurrences=_occurrences(obj.get("occurrences")),
    )
    return record, note


def _occurrences(value: Any) -> int:
    """A follow-up line's count (tlsgate's `Repeats`); 1 for every other line, or for a value that is not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 53 else 1


@dataclass
class Reader:
    """Streams records out of findings files, sending each kind of oddity to `warn` a few times and counting the rest."""

    warn: Callable[[str], None]
    lines: int = 0
    records: int = 0
    skipped: int = 0
    _shown: dict[str, int] = field(default_factory=dict)

    def _note(self, kind: str, message: str) -> None:
        shown = self._shown.get(kind, 0)
        self._shown[kind] = shown + 1
        if shown < WARNINGS_SHOWN:
            self.warn(message)
        elif shown == WARNINGS_SHOWN:
            self.warn(f"(further warnings of this kind are only counted: {kind})")

    def read(self, path: str | Path) -> Iterator[Record]:
        path = Path(path)
        try:
            handle = path.open("r", encoding="utf-8", errors="replace", newline="")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        # Oddities before the first finding are held back: if no finding follows, the file is not findings
        # and one clear error beats a screenful of per-line warnings.
        held: list[tuple[str, str]] = []
        nonblank = found = 0
        with handle:
            for number, line, last in _numbered(handle):
                self.lines += 1
                text = line.strip()
                if not text:
                    continue
                nonblank += 1
                record, kind, reason = _decode(text, last and not line.endswith("\n"))
                if record is None:
                    self.skipped += 1
                    message = f"{path}:{number}: warning: {reason}; skipped"
                    if found:
                        self._note(kind, message)
                    elif nonblank >= PROBE_WINDOW:
                        raise InputError(f"{path}: not a tlsgate findings file (the first {nonblank} lines hold no finding)")
                    else:
                        held.append((kind, message))
                    continue
                if not found:
                    for held_kind, message in held:
                        self._note(held_kind, message)
                    held.clear()
                found += 1
                if reason:
                    self._note(kind, f"{path}:{number}: warning: {reason}")
                self.records += 1
                yield record
        if nonblank and not found:
            if all(kind == "torn" for kind, _ in held):
                for kind, message in held:
                    self._note(kind, message)
                return
            raise InputError(f"{path}: not a tlsgate findings file (no line is a finding: expected one JSON object per line)")


def _numbered(handle: Iterator[str]) -> Iterator[tuple[int, str, bool]]:
    """Lines with their number and whether each is the last: only the last line can be a torn write."""
    previous: str | None = None
    number = 0
    for line in handle:
        if previous is not None:
            number += 1
            yield number, previous, False
        previous = line
    if previous is not None:
        yield number + 1, previous, True


def _decode(text: str, torn_possible: bool) -> tuple[Record | None, str, str | None]:
    """(record or None, kind of oddity, message); a record with a message is read but from an older format."""
    try:
        obj = json.loads(text)
    except ValueError:
        if text.startswith("{"):
            where = "the last line" if torn_possible else "a line"
            return None, "torn", f"{where} is cut short (tlsgate stopped mid-write?)"
        return None, "json", "not JSON"
    record, reason = parse(obj)
    if record is None:
        return None, "shape", reason
    return record, "format", reason
