"""Findings: the record of every verdict that was not a plain allow.

One JSON object per line so that `jq`, a log shipper or a test can read them
without a parser of ours; the same event as one readable console line for the
person watching the proxy. Evidence is built by callers from redacted facts
only: nothing here ever sees a secret value.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tlsgate.sinks.redact import redact_host
from tlsgate.tls.recent import Recent
from tlsgate.tls.severity import SEVERITIES

# The longest value of each text field, in characters after escaping: generous next to what any check
# writes (a host name is at most 255 bytes), small enough that the few thousand findings a report keeps
# in full stay a few megabytes, whoever wrote the file. The writer cuts here and the reader cuts here.
FIELD_CHARS = {
    "check": 128,
    "host": 2048,
    "client": 256,
    "rule": 2048,
    "detail": 8192,
    "remedy": 8192,
    "device": 256,
    "time": 64,
}


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
    # The OWASP MASTG tests and MASVS controls this finding evidences, and whether failed or passed
    # (`tlsgate.tls.mastg.Refs.as_dict`); absent when it evidences none.
    mastg: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        # The host and SNI are what the client sent: whatever is not a host name in them is not kept.
        object.__setattr__(self, "host", redact_host(self.host))
        sni = self.evidence.get("sni") if isinstance(self.evidence, dict) else None
        if isinstance(sni, str) and redact_host(sni) != sni:
            object.__setattr__(self, "evidence", {**self.evidence, "sni": redact_host(sni)})

    def record(self) -> dict[str, Any]:
        """The finding as it is written: every string escaped, evidence bounded in depth (see `json_safe`),
        each field at most FIELD_CHARS long (what `tlsgate report` reads without cutting)."""
        return self._record()[0]

    def _record(self) -> tuple[dict[str, Any], bool]:
        data = {f.name: json_safe(getattr(self, f.name)) for f in fields(self)}
        if data.get("occurrences") is None:
            data.pop("occurrences", None)  # a line without it stands for one occurrence
        if not data.get("mastg"):
            data.pop("mastg", None)  # older readers, and findings that evidence no MASTG test, see no new field
        cut = False
        for name, cap in FIELD_CHARS.items():
            value = data[name]
            if isinstance(value, str) and len(value) > cap:
                data[name], cut = value[: cap - 1] + "…", True
        return data, cut

    def as_json(self) -> str:
        return json.dumps(self.record(), separators=(",", ":"))

    def console_line(self) -> str:
        """One line, whatever the client sent: control characters and undecodable bytes are escaped, so a
        hostile SNI or Host header can neither forge a log line nor break a log shipper's UTF-8."""
        who = self.device or self.client or "?"
        where = f"{self.host}:{self.port}" if self.port else self.host
        line = f"[{self.severity.upper()}] {self.action} {self.check} {where} from {who} (rule {self.rule}): {self.detail}"
        if self.occurrences is not None:
            line += f" (seen {self.occurrences} more time(s) since it was last written)"
        return printable(line)


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every character that is not printable written as a visible escape (`\\x1b`, `\\u202e`).

    Not printable: C0 and C1 controls (ESC, BEL, CR, LF, NUL...), lone surrogates (an undecodable byte of a
    User-Agent arrives as one and breaks every UTF-8 encoder after it), bidi overrides and zero-width
    characters (they reorder or hide what a reader sees), line and paragraph separators, unassigned code
    points and non-characters (U+FFFE is not even allowed in XML). Whatever remains is valid UTF-8 and
    XML 1.0, one line, and shows what it says, on a terminal, in a log shipper, in every report format.
    """
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


MAX_DEPTH = 16  # nesting kept in a finding's evidence; deeper values are replaced by a note
_TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels]"


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as JSON that any reader can take: strings (and keys) through `printable`, no NaN or
    Infinity (not JSON), nesting bounded, anything else as its escaped `str()`.

    Applied where findings are written, so no finding file, log collector or report ever receives a raw
    control character or a lone surrogate from what an app or a client sent; and on reading, so files
    written by older versions (or by hand) are held to the same rule.
    """
    if isinstance(value, str):
        return printable(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth >= MAX_DEPTH:
            return _TOO_DEEP
        if isinstance(value, dict):
            return {printable(str(key)): json_safe(item, depth + 1) for key, item in value.items()}
        return [json_safe(item, depth + 1) for item in value]
    return printable(str(value))


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
    data, cut = finding._record()
    line = json.dumps(data, separators=(",", ":"))
    if len(line) <= limit:
        return line, cut
    kept = data["evidence"] if isinstance(data["evidence"], dict) else {}
    evidence = {
        "truncated": True,
        "evidence_chars": len(json.dumps(data["evidence"])),
        "keys": sorted(key[:64] for key in kept)[:32],
    }
    short = {"host": data["host"][:255], "client": (data["client"] or "")[:64] or None, "rule": data["rule"][:300]}
    short |= {"detail": data["detail"][:1000], "remedy": data["remedy"][:1000], "device": data["device"] and data["device"][:64]}
    short |= {"check": data["check"][:64], "time": str(data["time"])[:64]}
    return replace(finding, **short, evidence=evidence).as_json(), True  # about 3 KiB at most


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
        self._tallies: Recent[Hashable, _Tally] = Recent(limit, lambda _key, forgotten: self._write(forgotten))

    def __len__(self) -> int:
        return len(self._tallies)

    def again(self, key: Hashable) -> bool:
        """True (and counted) when `key` was recorded before; False when the caller must record it now."""
        tally = self._tallies.get(key)
        if tally is None:
            return False
        tally.total += 1
        self.log.count(tally.finding)
        if tally.total >= next_threshold(tally.written):
            self._write(tally)
        return True

    def first(self, key: Hashable, finding: Finding) -> None:
        """`finding` was just recorded for `key`: later occurrences are counted against it."""
        self._tallies.put(key, _Tally(finding))

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
