"""Insecure fallback as a pure verdict: which plain request retries which failed TLS event, on realistic sessions.

The corpus is app traffic as tlsgate sees it, event by event: TLS events the
recording path feeds (probes, refusals, blocks), https:// requests that got
through, and plain http:// requests. Benign sessions (apps that mix hosts, use
http:// by habit, recover over TLS, retry much later) must never link; fallback
sessions (the same request in the clear right after a failed handshake or an
accepted probe) must always link, to the right event.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

import pytest

from tlsgate.checks.fallback import (
    HABITS,
    PATH_CHARS,
    TRIGGERS,
    WINDOW,
    FallbackWatch,
    Trigger,
    is_trigger,
    judge_fallback,
    request_key,
)
from tlsgate.checks.model import Action, Check, decide
from tlsgate.policy import Mode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probe_refused(at: float, kind: str = "self_signed") -> Trigger:
    return Trigger("client_probe", kind, "passed", at, "2026-12-06T16:00:00.000+00:00", "10.0.0.5:50001", 443)


def probe_accepted(at: float, method: str, url: str) -> Trigger:
    return Trigger("client_probe", "self_signed", "blocked", at, "t", "10.0.0.5:50002", 443, request_key(method, url))


def upstream_blocked(at: float) -> Trigger:
    return Trigger("pin", "pin_mismatch", "blocked", at, "t", "10.0.0.5:50003", 443)


# One event: ("tls", device, host, trigger factory), ("ok", device, host), ("http", device, host, method, url),
# ("wait", seconds). A session's expected links: the indexes of its "http" events that retry a TLS event.
@dataclass
class Session:
    name: str
    events: list[tuple]
    links: list[int]


BENIGN = [
    Session(
        "different hosts: images over http://cdn, the API over https:// (probed, refused)",
        [
            ("tls", "phone", "api.shop.test", probe_refused),
            ("http", "phone", "cdn.shop.test", "GET", "http://cdn.shop.test/img/1.png"),
            ("ok", "phone", "api.shop.test"),
            ("http", "phone", "cdn.shop.test", "GET", "http://cdn.shop.test/img/2.png?w=200"),
        ],
        [],
    ),
    Session(
        "an app that only ever used http:// for its host",
        [
            ("http", "phone", "legacy.test", "GET", "http://legacy.test/feed"),
            ("http", "phone", "legacy.test", "POST", "http://legacy.test/track"),
            ("http", "phone", "legacy.test", "GET", "http://legacy.test/feed"),
        ],
        [],
    ),
    Session(
        "one host, http:// images by habit before the API handshake was probed",
        [
            ("http", "phone", "news.test", "GET", "http://news.test/img/a.jpg"),
            ("tls", "phone", "news.test", probe_refused),
            ("http", "phone", "news.test", "GET", "http://news.test/img/b.jpg"),
        ],
        [],
    ),
    Session(
        "probe refused, the app retried over TLS and got through, then http:// images",
        [
            ("tls", "phone", "news.test", probe_refused),
            ("tls", "phone", "news.test", lambda at: probe_refused(at, "wrong_host")),
            ("ok", "phone", "news.test"),
            ("http", "phone", "news.test", "GET", "http://news.test/img/b.jpg"),
        ],
        [],
    ),
    Session(
        "a plain request long after the failed handshake",
        [
            ("tls", "phone", "api.test", probe_refused),
            ("wait", WINDOW + 5),
            ("http", "phone", "api.test", "GET", "http://api.test/v1/items"),
        ],
        [],
    ),
    Session(
        "another device's plain request to the host",
        [
            ("tls", "phone", "api.test", upstream_blocked),
            ("http", "tablet", "api.test", "GET", "http://api.test/v1/items"),
        ],
        [],
    ),
    Session(
        "an accepted probe on POST /login, then an unrelated plain request",
        [
            ("tls", "phone", "api.test", lambda at: probe_accepted(at, "POST", "https://api.test/login")),
            ("http", "phone", "api.test", "GET", "http://api.test/static/app.js"),
        ],
        [],
    ),
    Session(
        "the same request sent in the clear by habit before the accepted probe",
        [
            ("http", "phone", "api.test", "GET", "http://api.test/config"),
            ("tls", "phone", "api.test", lambda at: probe_accepted(at, "GET", "https://api.test/config")),
            ("http", "phone", "api.test", "GET", "http://api.test/config"),
        ],
        [],
    ),
]

FALLBACKS = [
    Session(
        "probe refused, next request to the host in the clear",
        [
            ("http", "phone", "cdn.test", "GET", "http://cdn.test/logo.png"),
            ("tls", "phone", "api.test", probe_refused),
            ("wait", 0.4),
            ("http", "phone", "api.test", "POST", "http://api.test/v1/login"),
            ("http", "phone", "api.test", "GET", "http://api.test/v1/items"),  # ordinary cleartext now: event used up
        ],
        [1],
    ),
    Session(
        "upstream pin mismatch blocked, the app retries over http://",
        [("tls", "phone", "bank.test", upstream_blocked), ("http", "phone", "bank.test", "GET", "http://bank.test/")],
        [0],
    ),
    Session(
        "accepted probe on POST /login, the same request (new nonce) over http://",
        [
            ("tls", "phone", "api.test", lambda at: probe_accepted(at, "POST", "https://api.test/login/?nonce=1")),
            ("http", "phone", "api.test", "GET", "http://api.test/static/app.js"),
            ("http", "phone", "api.test", "post", "http://api.test/login?nonce=2"),
        ],
        [1],
    ),
    Session(
        "two failed handshakes, two plain retries",
        [
            ("tls", "phone", "api.test", probe_refused),
            ("http", "phone", "api.test", "GET", "http://api.test/a"),
            ("wait", 2),
            ("tls", "phone", "api.test", lambda at: probe_refused(at, "expired")),
            ("http", "phone", "api.test", "GET", "http://api.test/a"),
        ],
        [0, 1],  # each failed handshake links its own retry; a retry is not habit
    ),
]


def run(session: Session) -> tuple[list[int], list[Trigger]]:
    clock = Clock()
    watch = FallbackWatch(clock=clock)
    links: list[int] = []
    linked: list[Trigger] = []
    plain = 0
    for event in session.events:
        match event:
            case ("tls", device, host, make):
                watch.tls_event(device, host, make(clock.now))
            case ("ok", device, host):
                watch.tls_request(device, host)
            case ("http", device, host, method, url):
                found = watch.cleartext(device, host, method, url)
                if found is not None:
                    links.append(plain)
                    linked.append(found)
                plain += 1
            case ("wait", seconds):
                clock.now += seconds
        clock.now += 0.05
    return links, linked


@pytest.mark.parametrize("session", BENIGN, ids=lambda s: s.name)
def test_benign_sessions_never_link(session: Session) -> None:
    assert run(session)[0] == session.links == []


@pytest.mark.parametrize("session", FALLBACKS, ids=lambda s: s.name)
def test_fallback_sessions_link_the_retry(session: Session) -> None:
    assert run(session)[0] == session.links


def test_corpus_rates() -> None:
    """False-positive rate 0 over the benign sessions' plain requests, detection 100 % over the fallback sessions."""
    benign_requests = sum(1 for s in BENIGN for e in s.events if e[0] == "http")
    false_links = sum(len(run(s)[0]) for s in BENIGN)
    detected = sum(1 for s in FALLBACKS if run(s)[0] == s.links)
    assert benign_requests >= 12 and false_links == 0
    assert detected / len(FALLBACKS) == 1.0


def test_the_link_names_the_earlier_event_and_no_secret() -> None:
    _, (trigger,) = run(FALLBACKS[0])
    issue = judge_fallback(trigger, "api.test", "POST", "http://api.test/v1/login", cleartext_blocks=True)
    assert issue.check is Check.FALLBACK and issue.kind == "insecure_fallback"
    assert issue.evidence["after"] == {
        "check": "client_probe",
        "kind": "self_signed",
        "action": "passed",
        "time": "2026-12-06T16:00:00.000+00:00",
        "connection": "10.0.0.5:50001",
        "port": 443,
    }
    assert decide(issue, Mode.ENFORCE) is Action.BLOCKED and decide(issue, Mode.REPORT) is Action.REPORTED
    allowed = judge_fallback(trigger, "api.test", "POST", "http://api.test/v1/login", cleartext_blocks=False)
    assert decide(allowed, Mode.ENFORCE) is Action.REPORTED  # cleartext the policy allows is not blocked for it


def test_request_key_ignores_query_fragment_trailing_slash_and_method_case() -> None:
    assert request_key("post", "https://a.test/login/?n=1#x") == request_key("POST", "http://a.test/login?n=2")
    assert request_key("GET", "http://a.test") == ("GET", "/")
    assert request_key("GET", "/x/y/") == ("GET", "/x/y")
    assert len(request_key("GET", "http://a.test/" + "p" * 5000)[1]) == PATH_CHARS


@pytest.mark.parametrize(
    ("check", "action", "expected"),
    [
        ("client_probe", "passed", True),
        ("client_probe", "blocked", True),
        ("client_trust", "reported", True),
        ("pin", "blocked", True),
        ("fault", "failed", True),
        ("client_protocol", "blocked", True),
        ("client_protocol", "reported", False),  # the connection went on
        ("certificate", "reported", False),
        ("cleartext", "blocked", False),
        ("payload", "blocked", False),
    ],
)
def test_which_findings_are_tls_events(check: str, action: str, expected: bool) -> None:
    assert is_trigger(check, action) is expected


def test_memory_is_bounded_per_device_and_host() -> None:
    """The numbers in the report: devices x hosts x (TRIGGERS events + HABITS requests), each path at most PATH_CHARS.

    Filled past every limit with the largest inputs: 255-character host names, 4000-character paths, twice
    the devices, hosts, events and requests each level keeps; what stays is the bound, per (device, host).
    """
    devices, hosts = 16, 16
    watch = FallbackWatch(devices=devices, hosts=hosts)
    tracemalloc.start()
    try:
        for d in range(devices * 2):
            for h in range(hosts * 2):
                host = f"h{h}-" + "x" * 250
                for i in range(HABITS * 2):
                    watch.cleartext(f"device-{d}", host, "GET", f"http://{host}/{i}/" + "q" * 4000)
                for i in range(TRIGGERS * 2):
                    at = watch.clock()
                    watch.tls_event(f"device-{d}", host, probe_accepted(at, "POST", f"http://{host}/{i}/" + "p" * 4000))
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(watch) == devices and watch.entries() == devices * hosts
    per_pair = current / (devices * hosts)
    assert per_pair < 4 * 1024, per_pair  # measured about 2.4 KiB; the README says "at most about 2.5 KiB"
