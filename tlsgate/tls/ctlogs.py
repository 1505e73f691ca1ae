"""The Certificate Transparency logs an SCT is checked against: a log list in Google's v3 format.

tlsgate ships one copy (`ct_log_list.json`, with where it came from and when it
was published recorded in it); a policy can name a newer one
(`ct_log_list: FILE`, read by `tlsgate.policy.sections.ct`). A log list goes stale as logs are added
and retired, and Chrome stops enforcing CT when its list is older than ten
weeks rather than refuse servers it simply does not know: the age is kept here
so the check can do the same.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SHIPPED_FILE = "ct_log_list.json"
SHIPPED_SOURCE = "tlsgate's copy of Google's log list"
# Chrome's own rule: a log list older than this no longer decides anything (components/certificate_transparency).
STALE_AFTER = dt.timedelta(days=70)
MAX_BYTES = 4 << 20  # Google's list is about 60 KiB; anything near this is not a log list
MAX_LOGS = 2000

LogKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class LogListError(ValueError):
    """A log list tlsgate cannot use, said in words (never the file's contents)."""


class LogState(enum.StrEnum):
    PENDING = "pending"
    QUALIFIED = "qualified"
    USABLE = "usable"
    READONLY = "readonly"
    RETIRED = "retired"
    REJECTED = "rejected"


# An SCT from a log in these states counts (Chrome's CT policy); a retired log's only if issued before it retired.
COUNTING_STATES = frozenset({LogState.QUALIFIED, LogState.USABLE, LogState.READONLY})


@dataclass(frozen=True)
class CtLog:
    log_id: bytes  # SHA-256 of the key's DER SubjectPublicKeyInfo, as SCTs name their log
    description: str
    operator: str
    key: LogKey
    state: LogState | None
    state_since: dt.datetime | None
    tiled: bool = False

    def refuses(self, issued: dt.datetime) -> str | None:
        """Why an SCT this log issued at `issued` does not count, or None when it does."""
        if self.state in COUNTING_STATES:
            return None
        if self.state is LogState.RETIRED and self.state_since is not None and issued < self.state_since:
            return None
        if self.state is LogState.RETIRED:
            since = self.state_since.date().isoformat() if self.state_since else "an unknown date"
            return f"the log retired on {since}, before this SCT"
        return f"the log is {self.state or 'without a state'} in the log list, not trusted yet or any more"


@dataclass(frozen=True)
class LogList:
    version: str
    published: dt.datetime
    logs: Mapping[bytes, CtLog] = field(repr=False)
    source: str
    skipped: int = 0  # logs whose key type cannot sign SCTs (neither ECDSA nor RSA); never counted

    def find(self, log_id: bytes) -> CtLog | None:
        return self.logs.get(log_id)

    def age(self, now: dt.datetime) -> dt.timedelta:
        return now - self.published

    def stale(self, now: dt.datetime) -> bool:
        return self.age(now) > STALE_AFTER

    def summary(self, now: dt.datetime) -> dict[str, Any]:
        """What a finding says about the list it was judged against."""
        return {
            "source": self.source,
            "version": self.version,
            "published": self.published.isoformat().replace("+00:00", "Z"),
            "age_days": max(0, self.age(now).days),
            "logs": len(self.logs),
        }


def _timestamp(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise LogListError(f"{what} must be a date-time string like 2026-01-11T12:53:56Z")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise LogListError(f"{what} is not a date-time like 2026-01-11T12:53:56Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise LogListError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LogListError(f"{what} is not valid base64") from None


def _state(entry: Mapping[str, Any], what: str) -> tuple[LogState | None, dt.datetime | None]:
    state = entry.get("state")
    if state is None:
        return None, None
    if not isinstance(state, dict) or len(state) != 1:
        raise LogListError(f"{what}: 'state' must name exactly one state")
    ((name, body),) = state.items()
    try:
        which = LogState(name)
    except ValueError:
        raise LogListError(f"{what}: unknown state {str(name)[:40]!r}") from None
    since = _timestamp(body.get("timestamp"), f"{what}: state timestamp") if isinstance(body, dict) else None
    return which, since


def _log(entry: Any, operator: str, tiled: bool, index: int) -> CtLog | None:
    what = f"log #{index} of operator {operator[:60]!r}"
    if not isinstance(entry, dict):
        raise LogListError(f"{what} is not an object")
    description = entry.get("description")
    what = f"log {str(description)[:80]!r}" if isinstance(description, str) else what
    der = _b64(entry.get("key"), f"{what}: key")
    log_id = _b64(entry.get("log_id"), f"{what}: log_id")
    if hashlib.sha256(der).digest() != log_id:
        raise LogListError(f"{what}: log_id is not the SHA-256 of its key; the list is corrupt")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise LogListError(f"{what}: key is not a DER SubjectPublicKeyInfo") from None
    state, since = _state(entry, what)
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return None  # RFC 6962 logs sign with ECDSA or RSA; no SCT could verify against another key
    return CtLog(log_id, str(description or "unnamed log"), operator, key, state, since, tiled)


def parse_log_list(data: bytes, source: str) -> LogList:
    """A v3 log list (Google's `log_list.json`, or one in the same schema) -> LogList, or LogListError."""
    if len(data) > MAX_BYTES:
        raise LogListError(f"the log list is larger than {MAX_BYTES >> 20} MiB")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise LogListError(f"the log list is not JSON{where}") from None
    if not isinstance(document, dict) or not isinstance(document.get("operators"), list):
        raise LogListError("the log list has no 'operators' list (expected Google's v3 log_list.json schema)")
    published = _timestamp(document.get("log_list_timestamp"), "log_list_timestamp")
    logs: dict[bytes, CtLog] = {}
    skipped = count = 0
    for number, operator in enumerate(document["operators"], 1):
        if not isinstance(operator, dict) or not isinstance(operator.get("name"), str):
            raise LogListError(f"operator #{number} has no name")
        for kind in ("logs", "tiled_logs"):
            entries = operator.get(kind) or []
            if not isinstance(entries, list):
                raise LogListError(f"operator {operator['name'][:60]!r}: '{kind}' is not a list")
            for index, entry in enumerate(entries, 1):
                count += 1
                if count > MAX_LOGS:
                    raise LogListError(f"the log list names more than {MAX_LOGS} logs")
                log = _log(entry, operator["name"], kind == "tiled_logs", index)
                if log is None:
                    skipped += 1
                elif log.log_id in logs:
                    raise LogListError(f"log {log.description[:80]!r} appears twice")
                else:
                    logs[log.log_id] = log
    return LogList(str(document.get("version", "unversioned"))[:40], published, logs, source, skipped)


@functools.cache
def shipped_log_list() -> LogList:
    data = resources.files("tlsgate.tls").joinpath(SHIPPED_FILE).read_bytes()
    return parse_log_list(data, SHIPPED_SOURCE)


def load_log_list(path: str | Path) -> LogList:
    """An operator's log list file; LogListError (with the file's name) when it cannot be used."""
    name = Path(path).name
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise LogListError(f"cannot read the CT log list {name}: {exc.strerror or exc}") from None
    try:
        return parse_log_list(data, name)
    except LogListError as exc:
        raise LogListError(f"CT log list {name}: {exc}") from None
