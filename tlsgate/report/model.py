"""Reading findings files one line at a time.

A findings file is written by a proxy that may have crashed mid-line, may be
an older tlsgate, or may be a newer one with fields this reader has never
seen; all of that is still a findings file and is read with a warning. A file
that is not findings at all (a policy, a JSON array, a log) must stop a CI job
with a clear message instead of producing a green "0 findings" report.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tlsgate.sinks.findings import FIELD_CHARS, MAX_DEPTH, json_safe, printable
from tlsgate.tls import mastg
from tlsgate.tls.severity import RANK, SEVERITIES, fails

# Non-blank lines read before a file without a single finding is declared "not findings".
PROBE_WINDOW = 50
# Each distinct kind of problem is warned about this many times, then only counted.
WARNINGS_SHOWN = 3


# How tlsgate names its packaged default policy in findings written before it was named by its
# checkout path (`policies/default.yaml`) everywhere.
EMBEDDED_PREFIX = "embedded:"


def rule_location(rule: str) -> tuple[str, int | None]:
    """`policies/app.yaml:12` -> ("policies/app.yaml", 12); a reference without a line number is all path."""
    path, sep, line = rule.rpartition(":")
    if sep and line.isascii() and line.isdigit() and len(line) <= 9:
        return path, int(line)
    return rule, None


@functools.lru_cache(maxsize=4096)  # a run has a few dozen rules, repeated on every line
def rule_key(rule: str) -> str:
    """The deciding rule as the identity of a problem: the policy file's name and the line, nothing more.

    A rule reference names the file as seen from where tlsgate ran: `policies/app.yaml:12` from the
    checkout, `app/policies/app.yaml:12` from its parent directory, `tlsgate/policy.yaml:12` from
    elsewhere, `embedded:policies/default.yaml:5` in findings of older installed versions. The same rule
    on a laptop and in CI must be the same problem to `diff`, so only the file's name and the line count;
    a different file or line is a different rule.
    """
    path, line = rule_location(rule)
    name = path.removeprefix(EMBEDDED_PREFIX).replace("\\", "/").rstrip("/").rpartition("/")[2]
    return f"{name}:{line}" if line is not None else name


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
    written_mastg: mastg.Refs = mastg.NONE  # the line's own `mastg` field, known ids only (see `evidenced`)

    @property
    def rank(self) -> int:
        return RANK[self.severity]

    @property
    def kind(self) -> str | None:
        kind = self.evidence.get("kind")
        if isinstance(kind, str) and kind:
            return kind
        protocol = self.evidence.get("protocol")
        if self.check == "cleartext" and protocol in ("http", "ws"):
            return f"plain_{protocol}"  # earlier tlsgate wrote these without a kind: one problem, one name
        return None

    @property
    def evidenced(self) -> mastg.Refs:
        """The MASTG tests and MASVS controls this finding evidences: from this tlsgate's table whenever it knows
        the kind, whatever the line says (a file cannot relabel a finding, and older files, written before the
        field, get it too); the line's own field only for a kind the table does not know (a newer tlsgate)."""
        known = mastg.lookup(self.check, self.kind, self.evidence, self.action)
        return self.written_mastg if known is None else known

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
        if not sep or not (port.isascii() and port.isdigit()):
            return self.client
        return address.strip("[]")

    @property
    def who(self) -> str:
        """The device under test: its policy name, else the app's TLS fingerprint, else its address (never the port)."""
        return self.device or self.fingerprint or self.client_address or "unknown"

    @property
    def rule_location(self) -> tuple[str, int | None]:
        return rule_location(self.rule)

    @property
    def rule_key(self) -> str:
        return rule_key(self.rule)

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
        values = {name: getattr(self, name) for name in self.__slots__}
        return values | {"written_mastg": self.written_mastg.as_dict()}


# Evidence kept per finding, as compact JSON characters: tlsgate itself writes a whole finding in 16 KiB.
# Bigger evidence is summarised the way the writer does it, keeping what the reports group and tabulate by.
# Field values are capped at FIELD_CHARS, as the writer caps them.
EVIDENCE_CHARS = 16 * 1024
IDENTITY_EVIDENCE = (
    "kind",
    "host_pattern",
    "ja4",
    "ja3",
    "sni",
    "protocol",
    "pin_set",
    "negotiated_version",
    "negotiated_suite",
    "best_offered_version",
)
ACTIONS = ("blocked", "reported", "passed", "failed")


def _shown(value: Any) -> str:
    """A value from the file as a warning shows it: repr() escapes it, and it is cut to a readable length."""
    text = repr(value)
    return printable(text if len(text) <= 60 else text[:57] + "...")


def _kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _evidence(value: Any, notes: list[str], line_chars: int | None, plain: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        notes.append(f"'evidence' is {_kind_of(value)}, not an object; ignored")
        return {}
    evidence: dict[str, Any] = value if plain else json_safe(value)
    # One character of the line becomes at most 11 of JSON here (`\\\\U000e0001` for a raw U+E0001): a line
    # this short cannot hold evidence over budget, and the common short line is not measured again.
    if line_chars is not None and line_chars * 11 <= EVIDENCE_CHARS:
        return evidence
    size = len(json.dumps(evidence, ensure_ascii=False, separators=(",", ":")))
    if size <= EVIDENCE_CHARS:
        return evidence
    notes.append(f"'evidence' is {size} characters of JSON; summarised")
    summary: dict[str, Any] = {
        key: evidence[key]
        for key in IDENTITY_EVIDENCE
        if isinstance(evidence.get(key), str) and len(evidence[key]) <= FIELD_CHARS["host"]
    }
    return summary | {"truncated": True, "evidence_chars": size, "keys": sorted(key[:64] for key in evidence)[:32]}


def parse(obj: Any, line_chars: int | None = None, plain: bool = False) -> tuple[Record | None, str | None]:
    """A record from one decoded line, and why it is odd (older format, wrong types, cut), if it is.

    Every string is escaped (`printable`) and capped here, once, so every format, the diff and the
    terminal get text without control characters, lone surrogates or bidi overrides, whatever the file
    held. `plain`: the line was ASCII without escapes or DEL and shallow (see `_is_plain`), so there is
    nothing to escape and nothing too deep; the common line skips that walk.
    """
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    notes: list[str] = []
    texts: dict[str, str | None] = {}
    for name, cap in FIELD_CHARS.items():
        value = obj.get(name)
        if value is not None and type(value) is not str:
            if name not in ("check", "host"):
                notes.append(f"'{name}' is {_kind_of(value)}, not a string; ignored")
            value = None
        elif value is not None:
            if not plain:
                value = printable(value)
            if len(value) > cap:
                notes.append(f"'{name}' is {len(value)} characters long; cut to {cap}")
                value = value[: cap - 1] + "…"
        texts[name] = value
    check, host = texts["check"], texts["host"]
    if not check or host is None:
        return None, "a JSON object without the 'check' and 'host' of a finding"
    severity = obj.get("severity")
    if not (isinstance(severity, str) and severity in RANK):
        notes.append(f"severity {_shown(severity)} is not one of {', '.join(SEVERITIES)} (older tlsgate?); read as 'info'")
        severity = "info"
    action = obj.get("action")
    if not (isinstance(action, str) and action in ACTIONS):
        notes.append(f"action {_shown(action)} is not {'/'.join(ACTIONS)} (older tlsgate?); read as 'reported'")
        action = "reported"
    port = obj.get("port")
    if port is not None and not (type(port) is int and 0 <= port <= 65535):
        notes.append(f"port {_shown(port)} is not a port number; ignored")
        port = None
    record = Record(
        check=check,
        action=action,
        severity=severity,
        host=host,
        port=port,
        client=texts["client"],
        device=texts["device"] or None,
        evidence=_evidence(obj.get("evidence"), notes, line_chars, plain),
        time=texts["time"],
        rule=texts["rule"] or "",
        detail=texts["detail"] or "",
        remedy=texts["remedy"] or "",
        occurrences=_occurrences(obj.get("occurrences")),
    )
    if "mastg" in obj and mastg.row_for(record.check, record.kind) is None:
        record.written_mastg, note = mastg.from_record(obj["mastg"])
        if note:
            notes.append(note)
    return record, "; ".join(notes) or None


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
        name = printable(str(path))
        try:
            # Bytes, split at \n only (a CR inside a line is that line's, as an editor numbers them), each
            # decoded on its own: bytes that are not UTF-8 are found (and replaced, with a warning) per line.
            handle = path.open("rb")
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
        # Oddities before the first finding are held back: if no finding follows, the file is not findings
        # and one clear error beats a screenful of per-line warnings.
        held: list[tuple[str, str]] = []
        nonblank = found = 0
        with handle:
            for number, line, last in _numbered(handle):
                self.lines += 1
                decoded: tuple[Record | None, str, str | None]
                if line is None:
                    decoded = None, "long", f"longer than {MAX_LINE_BYTES >> 20} MiB"
                else:
                    # A BOM (some editors and PowerShell write one; `cat` can put it mid-file) is not content.
                    text = line.decode("utf-8", "surrogateescape").strip().lstrip("\ufeff")
                    if not text:
                        continue
                    decoded = _decode(text, last and not line.endswith(b"\n"))
                record, kind, reason = decoded
                nonblank += 1
                if record is None:
                    self.skipped += 1
                    message = f"{name}:{number}: warning: {reason}; skipped"
                    if found:
                        self._note(kind, message)
                    elif nonblank >= PROBE_WINDOW:
                        raise InputError(f"{name}: not a tlsgate findings file (the first {nonblank} lines hold no finding)")
                    else:
                        held.append((kind, message))
                    continue
                if not found:
                    for held_kind, message in held:
                        self._note(held_kind, message)
                    held.clear()
                found += 1
                if reason:
                    self._note(kind, f"{name}:{number}: warning: {reason}")
                self.records += 1
                yield record
        if nonblank and not found:
            if all(kind == "torn" for kind, _ in held):
                for kind, message in held:
                    self._note(kind, message)
                return
            raise InputError(f"{name}: not a tlsgate findings file (no line is a finding: expected one JSON object per line)")


# Longest line read, in bytes. tlsgate writes at most 16 KiB per finding (older versions wrote up to about
# 250 KiB); past this a line is skipped unread, so one crafted line cannot take the report's memory.
MAX_LINE_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines, each at most MAX_LINE_BYTES; None stands for a longer line, which is read past in chunks."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while True:
            rest = handle.readline(_CHUNK)
            if not rest or rest.endswith(b"\n"):
                break
        yield None


def _numbered(handle: BinaryIO) -> Iterator[tuple[int, bytes | None, bool]]:
    """Lines with their number and whether each is the last: only the last line can be a torn write."""
    previous: bytes | None = None
    number = 0
    started = False
    for line in _bounded_lines(handle):
        if started:
            number += 1
            yield number, previous, False
        previous, started = line, True
    if started:
        yield number + 1, previous, True


_SURROGATES = re.compile("[\ud800-\udfff]")


def _finite(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


# One decoder for every line (json.loads builds one per call when given options). NaN, Infinity and 1e999
# are not JSON a strict reader takes: kept as the words.
_JSON = json.JSONDecoder(parse_constant=str, parse_float=_finite)


def _is_plain(text: str) -> bool:
    """Whether a line's strings are all printable and its nesting shallow, from its text alone: ASCII with
    no escape (so no control character, surrogate or invisible character) and no DEL, and fewer brackets
    than json_safe's depth bound. What tlsgate writes for ordinary traffic is; the rest is walked."""
    return text.isascii() and "\\" not in text and "\x7f" not in text and text.count("{") + text.count("[") <= MAX_DEPTH


def _decode(text: str, torn_possible: bool) -> tuple[Record | None, str, str | None]:
    """(record or None, kind of oddity, message); a record with a message is read, but something in it was odd."""
    invalid = None
    if not text.isascii() and _SURROGATES.search(text):
        # Bytes that are not UTF-8 (surrogate-escaped on reading): U+FFFD, as any UTF-8 reader shows them.
        text = _SURROGATES.sub("\ufffd", text)
        invalid = "bytes that are not UTF-8 replaced by U+FFFD"
    try:
        obj = _JSON.decode(text)
    except RecursionError:
        return None, "deep", "nested too deeply"
    except json.JSONDecodeError as exc:
        # Cut short: an object that runs to the end of the line unfinished (a crash mid-write).
        if text.startswith("{") and (exc.pos >= len(text) or exc.msg.startswith("Unterminated string")):
            where = "the last line" if torn_possible else "a line"
            return None, "torn", f"{where} is cut short (tlsgate stopped mid-write?)"
        return None, "json", f"not JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
    except ValueError as exc:  # a number of thousands of digits
        return None, "json", f"not JSON ({printable(str(exc)[:60])})"
    record, reason = parse(obj, len(text), _is_plain(text))
    if record is None:
        return None, "shape", reason
    if invalid:
        return record, "utf8", f"{invalid}; {reason}" if reason else invalid
    return record, "format", reason
