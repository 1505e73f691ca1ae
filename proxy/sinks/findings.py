"""Findings: the record of every verdict that was not a plain allow.

One JSON object per line so that `jq`, a log shipper or a test can read them
without a parser of ours; the same event as one readable console line for the
person watching the proxy. Evidence is built by callers from redacted facts
only: nothing here ever sees a secret value.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Finding:
    check: str  # cleartext, pin, certificate, protocol, cipher, client_*, ...
    action: str  # blocked | reported | passed
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

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, default=str, separators=(",", ":"))

    def console_line(self) -> str:
        """One line, whatever the client sent: control characters and undecodable bytes are escaped, so a
        hostile SNI or Host header can neither forge a log line nor break a log shipper's UTF-8."""
        who = self.device or self.client or "?"
        where = f"{self.host}:{self.port}" if self.port else self.host
        line = f"[{self.severity.upper()}] {self.action} {self.check} {where} from {who} (rule {self.rule}): {self.detail}"
        return printable(line)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


Listener = Callable[[Finding], None]


class FindingsLog:
    """Appends findings to a JSON-lines file and fans them out to listeners (console, metrics)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._listeners: list[Listener] = []
        self.path: Path | None = None
        if path:
            self.open(path)

    def open(self, path: str | os.PathLike[str]) -> None:
        self.close()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Findings name hosts and devices under test: keep them to the owner.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(self, finding: Finding) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(finding.as_json() + "\n")
        for listener in self._listeners:
            listener(finding)

