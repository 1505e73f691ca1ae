"""Findings: the record of every verdict that was not a plain allow.

One JSON object per line so that `jq`, a log shipper or a test can read them
without a parser of ours; the same event as one readable console line for the
person watching the proxy. Evidence is built by callers from redacted facts
only: nothing here ever sees a secret value.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from proxy.sinks.redact import redact_host

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Finding:
    check: str  # cleartext, pin, certificate, protocol, cipher, client_*, ...
    action: str  # blocked | reported | passed | failed (a network fault, not a verdict)
    severity: str
    host: str
    port: int | None
    client: str | None  # "address:port" of the device
    rule: str  # policy file:line that decided
    detail: str  # one human sentence
    remedy: str = ""  # what to change to allow it, when the block was wrong
    device: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    # On a follow-up line only (`Repeats`): how many more times the problem was seen since its last line.
    occurrences: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        # The host and SNI are what the client sent: whatever is not a host name in them is not kept.
        object.__setattr__(self, "host", redact_host(self.host))
        sni = self.evidence.get("sni") if isinstance(self.evidence, dict) else None
        if isinstance(sni, str) and redact_host(sni) != sni:
            object.__setattr__(self, "evidence", {**self.evidence, "sni": redact_host(sni)})

    def as_json(self) -> str:
        data = asdict(self)
        if data["occurrences"] is None:
            del data["occurrences"]  # a line without it stands for one occurrence
        return json.dumps(data, sort_keys=False, default=str, separators=(",", ":"))

    def console_line(self) -> str:
        """One line, whatever the client sent: control characters and undecodable bytes are escaped, so a
        hostile SNI or Host header can neither forge a log line nor break a log shipper's UTF-8."""
        who = self.device or self.client or "?"
        where = f"{self.host}:{self.port}" if self.port else self.host
        line = f"[{self.severity.upper()}] {self.action} {self.check} {where} from {who} (rule {self.rule}): {self.detail}"
        if self.occurrences is not None:
            line += f" (seen {self.occurrences} more time(s) since it was last written)"
        return printable(line)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


Listener = Callable[[Finding], None]


MAX_LINE = 16 * 1024  # one finding; evidence beyond this is summarised, not written
MAX_BYTES = 64 * 1024 * 1024  # the file is rotated past this (0: never)
KEEP = 5  # rotated files kept: findings.jsonl.1 (newest) ... findings.jsonl.5
STDOUT = "-"  # the findings "file" that means standard output: one JSON line each, for a container's log collector


def bounded(finding: Finding, limit: int = MAX_LINE) -> tuple[str, bool]:
    """The JSON line for a finding, at most about `limit` characters: a single request once produced 242 KiB.

    What is dropped is said in the line itself (`evidence.truncated`, the size and the evidence's keys), so
    a reader knows detail is missing rather than that it never existed.
    """
    line = finding.as_json()
    if len(line) <= limit:
        return line, False
    evidence = {
        "truncated": True,
        "evidence_chars": len(json.dumps(finding.evidence, default=str)),
        "keys": sorted(str(k)[:64] for k in finding.evidence)[:32],
    }
    short = {"host": finding.host[:255], "client": (finding.client or "")[:64] or None, "rule": finding.rule[:300]}
    short |= {"detail": finding.detail[:1000], "remedy": finding.remedy[:1000], "device": finding.device and finding.device[:64]}
    return Finding(**{**asdict(finding), **short, "evidence": evidence}).as_json(), True  # about 3 KiB at most


class FindingsLog:
    """Appends findings to a JSON-lines file and fans them out to listeners (console, metrics).

    The file is bounded for runs that last days: lines are capped and the file rotates by size, keeping
    `keep` old files, so a device stuck in a loop of blocked requests cannot fill the disk.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._size = 0
        self._listeners: list[Listener] = []
        self._counters: list[Listener] = []  # told of every occurrence `Repeats` counts instead of writing
        self.path: Path | None = None
        self.to_stdout = False
        self.max_bytes = max_bytes
        self.keep = keep
        self.truncated = 0  # findings whose evidence was summarised to fit MAX_LINE
        self.rotations = 0
        if path:
            self.open(path)

    def open(self, path: str | os.PathLike[str]) -> None:
        self.close()
        if os.fspath(path) == STDOUT:
            # In a container the runtime keeps stdout and the cluster's collector ships it: no file, no
            # volume, nothing to rotate. Each line is written and flushed whole, so the collector never
            # sees half a finding however stdout is buffered.
            self.path, self.to_stdout, self._file, self._size = None, True, sys.stdout, 0
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open_file()

    def _open_file(self) -> None:
        assert self.path is not None
        # Findings name hosts and devices under test: keep them to the owner.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._size = os.fstat(fd).st_size

    def close(self) -> None:
        with self._lock:
            if self.to_stdout:
                self.to_stdout, self._file = False, None  # stdout is the process's, not ours to close
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def recording(self) -> bool:
        """Whether findings are written anywhere (a file or stdout) besides the console."""
        return self._file is not None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_counts(self, listener: Listener) -> None:
        """`listener(finding)` for each occurrence of a finding that was counted, not written (metrics)."""
        self._counters.append(listener)

    def count(self, finding: Finding) -> None:
        for listener in self._counters:
            listener(finding)

    def record(self, finding: Finding) -> None:
        line, cut = bounded(finding)
        with self._lock:
            if cut:
                self.truncated += 1
            if self._file is not None:
                data = line + "\n"
                if self.max_bytes and self._size and self._size + len(data) > self.max_bytes and not self.to_stdout:
                    self._rotate()
                self._file.write(data)
                if self.to_stdout:
                    self._file.flush()
                self._size += len(data.encode("utf-8", "backslashreplace"))
        for listener in self._listeners:
            listener(finding)

    def _rotate(self) -> None:
        """findings.jsonl -> .1 -> .2 ...; the oldest beyond `keep` is removed. Called with the lock held."""
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for index in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(f"{self.path.name}.{index}").rename(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.keep > 0:
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.rotations += 1
        self._open_file()


# A follow-up line is written when a problem's count reaches each of these, then every further million.
THRESHOLDS = (10, 100, 1000, 10_000, 100_000, 1_000_000)
REPEATS_LIMIT = 8192


def next_threshold(written: int) -> int:
    for threshold in THRESHOLDS:
        if threshold > written:
            return threshold
    return (written // THRESHOLDS[-1] + 1) * THRESHOLDS[-1]


@dataclass
class _Tally:
    finding: Finding  # the first occurrence's line: what a follow-up repeats
    total: int = 1  # occurrences seen
    written: int = 1  # occurrences the lines written so far stand for


class Repeats:
    """Findings that describe a standing problem (reported, not blocked), written once and then counted.

    A chatty app repeats the same problem on every request; one line each
    would fill the file, one line in all would hide how often it happens. The
    first occurrence is written at once; later ones are counted (and each is
    passed to the `count` listeners, so metrics see every one), and a
    follow-up line carrying `occurrences` (how many more since the last line
    for it) is written when the count reaches 10, 100, 1000, ..., when the
    problem is forgotten to make room, and when tlsgate stops (`flush`). The
    sum of `occurrences` over a problem's lines (1 for a line without it) is
    how often it was seen. At most `limit` problems are tracked at once.
    """

    def __init__(self, log: FindingsLog, limit: int = REPEATS_LIMIT) -> None:
        self.log = log
        self.limit = limit
        self._tallies: OrderedDict[Hashable, _Tally] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tallies)

    def again(self, key: Hashable) -> bool:
        """True (and counted) when `key` was recorded before; False when the caller must record it now."""
        tally = self._tallies.get(key)
        if tally is None:
            return False
        self._tallies.move_to_end(key)
        tally.total += 1
        self.log.count(tally.finding)
        if tally.total >= next_threshold(tally.written):
            self._write(tally)
        return True

    def first(self, key: Hashable, finding: Finding) -> None:
        """`finding` was just recorded for `key`: later occurrences are counted against it."""
        self._tallies[key] = _Tally(finding)
        self._tallies.move_to_end(key)
        while len(self._tallies) > self.limit:
            _, forgotten = self._tallies.popitem(last=False)
            self._write(forgotten)

    def flush(self) -> None:
        """Write what is still only counted (tlsgate is stopping)."""
        for tally in self._tallies.values():
            self._write(tally)

    def _write(self, tally: _Tally) -> None:
        pending = tally.total - tally.written
        if pending <= 0:
            return
        tally.written = tally.total
        self.log.record(replace(tally.finding, occurrences=pending, time=datetime.now(UTC).isoformat(timespec="milliseconds")))
