"""Insecure fallback: the app sends over plain http:// what it could not send over TLS a moment ago.

nogotofail's "drop TLS" attack works because some apps, when a TLS connection
fails, retry the same request in the clear; an attacker on the network then
only has to break the handshake to read everything. tlsgate breaks handshakes
itself (probes), refuses them (client and upstream checks) and blocks TLS
connections, so it can see the retry: the same device sends the same request to
the same host over cleartext shortly after.

"The same request" (`Trigger.matches`):

- the same device (its `devices:` name, else its address) and the same host
  (the policy's host name, so port 443 and port 80 are one host);
- when the earlier event saw a request (a probe the app accepted and used),
  the same method and path; the query is ignored, since retries regenerate
  timestamps and nonces, and so are a trailing slash and the case of the
  method. When the earlier event was a handshake (no request was ever read),
  the first request the device sends to that host afterwards is the retry;
- within `WINDOW` seconds: a fallback path runs right after the exception, and
  a request minutes later is the app's ordinary traffic.

No false alarm: an app that uses http:// for one host and https:// for another
never links (different hosts); an app that already sent that request (or, for
handshake events, anything) to that host in the clear before the TLS event is
using cleartext by habit, which the `cleartext` check reports on its own; an app
whose next request to the host after a handshake event went over TLS recovered
(retried TLS and got through), so a later cleartext request is not the retry.
Each TLS event links at most one cleartext request: later ones are ordinary
cleartext.

Memory (`FallbackWatch`): at most `devices` devices, each with at most `hosts`
hosts (least recently seen forgotten first, `tlsgate.tls.recent.Recent`), each
host with at most `TRIGGERS` recent TLS events and `HABITS` cleartext requests;
paths are cut at `PATH_CHARS`. Nothing it keeps is a secret: kinds, times,
methods and already-redacted paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.tls.plaintext import Sighting
from tlsgate.tls.recent import Recent

WINDOW: Final = 60.0  # seconds after a TLS event in which a cleartext request can be its retry
TRIGGERS: Final = 4  # TLS events kept per (device, host): a retry follows the latest ones
HABITS: Final = 8  # cleartext (method, path) pairs kept per (device, host)
PATH_CHARS: Final = 128  # of a path kept for matching (already redacted by the caller)
DEVICES: Final = 256
HOSTS: Final = 32  # per device: an app retries at once, not after talking to 32 other hosts

# Checks whose finding on a TLS connection means the app's TLS did not carry its traffic there.
TLS_CHECKS: Final = frozenset(
    {
        "protocol",
        "cipher",
        "certificate",
        "pin",
        "revocation",
        "ct",
        "tls",
        "fault",
        "client_protocol",
        "client_ciphers",
        "client_sni",
        "client_hello",
        "client_trust",
        "client_probe",
    }
)
# These record what the client did with tlsgate's certificate whatever the action (a refused probe passed).
_ANY_ACTION: Final = frozenset({"client_probe", "client_trust"})


def is_trigger(check: str, action: str) -> bool:
    """Whether a finding on a TLS connection is an event an app could fall back from."""
    return check in TLS_CHECKS and (check in _ANY_ACTION or action in ("blocked", "failed"))


def request_key(method: str, url_or_path: str) -> tuple[str, str]:
    """(method, path) as matched: upper-case method, path without query, fragment or trailing slash."""
    path = url_or_path
    scheme, sep, rest = path.partition("://")
    if sep and "/" not in scheme:
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    for mark in ("?", "#"):
        path = path.split(mark, 1)[0]
    path = path.rstrip("/") or "/"
    return method.upper()[:16], path[:PATH_CHARS]


@dataclass(frozen=True, slots=True)
class Trigger:
    """A TLS event, as the fallback finding links it: which finding, when, on which connection."""

    check: str
    kind: str
    action: str
    at: float  # monotonic seconds, for the window
    time: str  # the earlier finding's own timestamp
    connection: str | None  # the client's address:port on that connection
    port: int | None
    request: tuple[str, str] | None = None  # (method, path) when the event saw a request

    def link(self) -> dict[str, Any]:
        """The evidence that ties the cleartext request to this event (no secret: kinds, time, connection)."""
        linked: dict[str, Any] = {
            "check": self.check,
            "kind": self.kind,
            "action": self.action,
            "time": self.time,
            "connection": self.connection,
            "port": self.port,
        }
        if self.request is not None:
            linked["method"], linked["path"] = self.request
        return linked


@dataclass(slots=True)
class _Host:
    triggers: tuple[Trigger, ...] = ()
    habits: tuple[int, ...] = ()  # hashes of the last HABITS (method, path) sent in the clear that were not retries
    habit: bool = False  # the device sent this host something in the clear that was not a retry


class FallbackWatch:
    """What each device did recently, per host: its failed TLS events and its cleartext habits; bounded."""

    def __init__(
        self,
        window: float = WINDOW,
        devices: int = DEVICES,
        hosts: int = HOSTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.hosts = hosts
        self.clock = clock
        self._devices: Recent[str, Recent[str, _Host]] = Recent(devices)

    def _host(self, device: str, host: str) -> _Host:
        hosts = self._devices.get(device)
        if hosts is None:
            hosts = Recent(self.hosts)
            self._devices.put(device, hosts)
        entry = hosts.get(host)
        if entry is None:
            entry = _Host()
            hosts.put(host, entry)
        return entry

    def tls_event(self, device: str, host: str, trigger: Trigger) -> None:
        """A TLS connection of `device` to `host` failed, was refused or blocked (`is_trigger`)."""
        entry = self._host(device, host)
        entry.triggers = (*entry.triggers, trigger)[-TRIGGERS:]

    def knows(self, device: str) -> bool:
        """Whether anything is remembered for `device` (asking does not make it recent): most responses need no more."""
        return device in self._devices

    def tls_request(self, device: str, host: str) -> None:
        """A request of `device` to `host` went through over TLS: it recovered from any handshake event before."""
        hosts = self._devices.get(device)
        entry = hosts.get(host) if hosts is not None else None
        if entry is not None:
            entry.triggers = tuple(t for t in entry.triggers if t.request is not None)

    def cleartext(self, device: str, host: str, method: str, url: str) -> Trigger | None:
        """A plain request: the TLS event it is the retry of (now used up), else None (and remembered as habit)."""
        now = self.clock()
        entry = self._host(device, host)
        key = request_key(method, url)
        live = [t for t in entry.triggers if now - t.at <= self.window]
        found = next((t for t in reversed(live) if self._retry_of(entry, t, key)), None)
        if found is not None:
            live.remove(found)
        entry.triggers = tuple(live)
        if found is None:
            entry.habits = (*(h for h in entry.habits if h != hash(key)), hash(key))[-HABITS:]
            entry.habit = True
        return found

    @staticmethod
    def _retry_of(entry: _Host, trigger: Trigger, key: tuple[str, str]) -> bool:
        """A cleartext request the device already sent (that request, or for a handshake event anything to the
        host) and that was not a retry is habit, before the event or after it: never a fallback."""
        if trigger.request is not None:
            return trigger.request == key and hash(key) not in entry.habits
        return not entry.habit

    def __len__(self) -> int:
        """Devices remembered."""
        return len(self._devices)

    def entries(self) -> int:
        """(device, host) pairs remembered: what the memory bound is counted in."""
        return sum(len(hosts) for hosts in self._devices.values())


def judge_fallback(trigger: Trigger, host: str, method: str, url: str, cleartext_blocks: bool) -> Issue:
    """The finding for a cleartext request that retries a failed TLS event.

    It blocks exactly when the cleartext verdict on the same request blocks
    (enforce mode, `cleartext` not allowing http): a host the policy lets
    through in the clear is not blocked because TLS failed first, it is
    reported.
    """
    what = f"{trigger.check}/{trigger.kind}"
    if trigger.request is not None:
        retried = f"the same request ({trigger.request[0]} {trigger.request[1]})"
    else:
        retried = f"{method.upper()[:16]} {request_key(method, url)[1]} as its next request to the host"
    return Issue(
        Check.FALLBACK,
        "insecure_fallback",
        Effect.ENFORCED if cleartext_blocks else Effect.RECORD,
        Severity.HIGH,
        f"after its TLS connection to {host} failed ({what}, {trigger.action}), the app sent {retried} over plain "
        "http://: an attacker who breaks the handshake reads it in the clear",
        {"method": method.upper()[:16], "url": url, "protocol": "http", "after": trigger.link()},
        "make the app fail closed when TLS fails: no http:// fallback path (remove the retry without TLS, and "
        "set cleartextTrafficPermitted=false / NSAllowsArbitraryLoads=false so the platform refuses it)",
    )


# -- STARTTLS stripping ---------------------------------------------------------------------------------

STRIP_PAIRS: Final = 4096  # (device, host, port) whose client already answered a stripped offer


class StripSchedule:
    """Which streams get their STARTTLS offer stripped: each (device, host, port) until its client has answered.

    Like the certificate probes, the attack costs a well-behaved app one
    connection, not all of them: once the client's answer is recorded (it went
    on in the clear, or it insisted on TLS), that pair's later streams are left
    alone. A stream that ended before any answer (the server offered no
    STARTTLS, the client left early) leaves the pair due. Bounded: the pairs
    answered least recently are forgotten first, and stripped again if they
    come back.
    """

    def __init__(self, limit: int = STRIP_PAIRS) -> None:
        self._answered: Recent[tuple[str, str, int | None], bool] = Recent(limit)

    def due(self, device: str, host: str, port: int | None) -> bool:
        return (device, host, port) not in self._answered

    def answered(self, device: str, host: str, port: int | None) -> None:
        self._answered.put((device, host, port), True)

    def __len__(self) -> int:
        return len(self._answered)


def judge_strip(sighting: Sighting, command: str, host: str, port: int | None, closed: bool = False) -> Issue | None:
    """The client's answer to a STARTTLS offer tlsgate removed; None while it has only negotiated.

    Went on in the clear (authenticated, or sent anything beyond greeting and
    capability commands): caught, and blocked in every mode, since tlsgate made
    the downgrade and must not hand the server what the app sent because of it.
    Asked for STARTTLS anyway, or left without sending anything: passed.
    """
    protocol = sighting.protocol
    where = f"{host}:{port}" if port else host
    evidence: dict[str, Any] = {"protocol": protocol, "stripped": True}
    if sighting.starttls_requested or sighting.upgraded:
        return _strip_passed(f"asked for STARTTLS though {where} no longer offered it", evidence, protocol)
    if sighting.credentials or (sighting.complete and not sighting.negotiation_only):
        creds = list(sighting.credentials)
        evidence.update({"command": command, "credentials": creds, "credential_lengths": dict(sighting.lengths)})
        mechanism = sighting.details.get("sasl_mechanism")
        if isinstance(mechanism, str):
            evidence["sasl_mechanism"] = mechanism
        sent = (
            f"authenticated in the clear ({command})"
            if creds or command in _AUTH_COMMANDS
            else f"went on in the clear ({command})"
        )
        return Issue(
            Check.FALLBACK,
            "starttls_strip_accepted",
            Effect.ALWAYS,
            Severity.CRITICAL if creds or command in _AUTH_COMMANDS else Severity.HIGH,
            f"tlsgate removed STARTTLS from {where}'s {protocol} capabilities and the client {sent}: a network attacker "
            "gets its login; tlsgate closed the stream before that line reached the server",
            evidence,
            f"make the app require TLS for {protocol} (STARTTLS required, or implicit TLS): never fall back to "
            "cleartext when the server does not offer STARTTLS",
        )
    if closed:
        return _strip_passed(f"left without going on in the clear when {where} no longer offered STARTTLS", evidence, protocol)
    return None


_AUTH_COMMANDS: Final = frozenset({"AUTH", "LOGIN", "AUTHENTICATE", "USER", "PASS", "APOP", "auth", "iq:auth"})


def _strip_passed(what: str, evidence: dict[str, Any], protocol: str) -> Issue:
    return Issue(
        Check.FALLBACK,
        "starttls_strip_refused",
        Effect.PASSED,
        Severity.INFO,
        f"tlsgate removed STARTTLS from the server's {protocol} capabilities and the client {what}: it refuses to downgrade",
        evidence,
    )
