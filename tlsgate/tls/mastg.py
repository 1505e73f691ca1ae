"""Which OWASP MASTG tests and MASVS controls each finding evidences: one table, read by every layer.

Mobile security teams report against OWASP MASVS (the controls) and MASTG
(the tests that verify them), so a finding that says only `client_probe/
wrong_host` leaves them to translate. The translation lives here, once, below
the sinks: the recording path stamps it on each finding, the report's
MASVS-NETWORK view and SARIF rules read it, and `--fail-on` gates by it. It
is data, so a unit test holds it to the code: every (check, kind) tlsgate can
emit has a row (or an explicit reason there is no MASTG test), and no row
names a kind nothing emits.

Checks are plain strings here (facts do not import the verdict layer); the
test checks them against `tlsgate.checks.model.Check`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tlsgate.tls.severity import GATE_LEVELS, RANK, SEVERITIES, fails

# Where every id and title below was read: the test files' front matter (tests-beta/{android,ios}/MASVS-NETWORK/
# MASTG-TEST-*.md), and for the MASVS control, the `masvs-v2` mapping of each test's weakness (OWASP MASWE:
# cleartext traffic, insecure TLS versions and insecure certificate validation map to MASVS-NETWORK-1; identity
# pinning to MASVS-NETWORK-2). MASWE ids themselves are left out: they were renumbered between these commits.
SOURCE: Final = {
    "mastg": "https://github.com/OWASP/mastg",
    "commit": "47c97c68cfa586cb50cc097ef2f64e9acb512ec4",
    "also_read": "MASTG-TEST-0242 at 129998a0ff3a, -0243 at 125ba6c9b372 (the same titles as at 6b0b7def269c, 2025-07-25)",
    "masvs_from": "OWASP/maswe weaknesses/MASVS-NETWORK MASWE-0026, -0027, -0028 (mappings.masvs-v2)",
    "retrieved": "2026-12-06",
}
SITE: Final = "https://mas.owasp.org/MASTG/tests"

NETWORK_1: Final = "MASVS-NETWORK-1"  # secure traffic: cleartext, TLS versions, certificate and host name validation
NETWORK_2: Final = "MASVS-NETWORK-2"  # identity pinning
CONTROLS: Final = (NETWORK_1, NETWORK_2)


@dataclass(frozen=True)
class MastgTest:
    """One MASTG test as OWASP publishes it, and how tlsgate can exercise it."""

    id: str
    title: str
    platform: str  # the test's own `platform:` (android, ios, or network: either OS)
    folder: str  # where it lives (and its page on mas.owasp.org): android or ios
    masvs: str
    # How tlsgate observes it on the wire: "passive" (every connection is judged, a failure is recorded),
    # "active" (only when something is turned on: probes, an app declaration), "" (evidence only: a
    # static test a wire finding corroborates, never passed by traffic).
    wire: str = ""
    needs: str = ""  # what exercises it, said when a report shows it as not exercised

    @property
    def url(self) -> str:
        return f"{SITE}/{self.folder}/MASVS-NETWORK/{self.id}/"


_PROBES_VALIDATION = "turn on client: probes: [self_signed, expired, untrusted_ca] for the app's hosts"
_PROBES_HOSTNAME = "turn on client: probes: [wrong_host] for the app's hosts"
_DECLARE = "declare the app (an app: section, or tlsgate app import) so cleartext it forbids itself is told apart"
_ANDROID = ("android", "android")

TESTS: Final[dict[str, MastgTest]] = {
    test.id: test
    for test in (
        # Insecure TLS versions (MASVS-NETWORK-1).
        MastgTest("MASTG-TEST-0217", "Insecure TLS Protocols Explicitly Allowed in Code", "android", "android", NETWORK_1),
        MastgTest(
            "MASTG-TEST-0218", "Insecure TLS Protocols in Network Traffic", "android", "android", NETWORK_1, "passive",
            "seen in any TLS connection: client.min_version (1.2 unless a rule lowers it) records a ClientHello offering less",
        ),
        MastgTest("MASTG-TEST-0343", "URLSession TLS Protocol Configuration", "ios", "ios", NETWORK_1),
        MastgTest("MASTG-TEST-0344", "Network.framework TLS Protocol Configuration", "ios", "ios", NETWORK_1),
        MastgTest("MASTG-TEST-0345", "Embedded or Third-party TLS Stack Configuration", "ios", "ios", NETWORK_1),
        MastgTest(
            "MASTG-TEST-0348", "Insecure TLS Protocols in Network Traffic", "ios", "ios", NETWORK_1, "passive",
            "seen in any TLS connection: client.min_version (1.2 unless a rule lowers it) records a ClientHello offering less",
        ),
        # Cleartext (MASVS-NETWORK-1).
        MastgTest(
            "MASTG-TEST-0236", "Cleartext Traffic Observed on the Network", "network", "android", NETWORK_1, "passive",
            "seen in any connection: cleartext: block or report (the default blocks) records what is sent in clear",
        ),
        MastgTest("MASTG-TEST-0238", "Runtime Use of Network APIs Transmitting Cleartext Traffic", *_ANDROID, NETWORK_1),
        MastgTest(
            "MASTG-TEST-0239", "Using low-level APIs (e.g. Socket) to set up a custom HTTP connection", *_ANDROID, NETWORK_1,
            "active", _DECLARE,
        ),
        MastgTest(
            "MASTG-TEST-0323", "Uses of Low-Level Networking APIs for Cleartext Traffic", "ios", "ios", NETWORK_1, "active",
            _DECLARE,
        ),
        # Certificate and hostname validation (MASVS-NETWORK-1).
        MastgTest(
            "MASTG-TEST-0234", "Missing Implementation of Server Hostname Verification with SSLSockets", "android", "android",
            NETWORK_1, "active", _PROBES_HOSTNAME,
        ),
        MastgTest("MASTG-TEST-0282", "Unsafe Custom Trust Evaluation", *_ANDROID, NETWORK_1, "active", _PROBES_VALIDATION),
        MastgTest(
            "MASTG-TEST-0283", "Incorrect Implementation of Server Hostname Verification", "android", "android", NETWORK_1,
            "active", _PROBES_HOSTNAME,
        ),
        MastgTest(
            "MASTG-TEST-0284", "Incorrect SSL Error Handling in WebViews", "android", "android", NETWORK_1, "active",
            _PROBES_VALIDATION,
        ),
        MastgTest(
            "MASTG-TEST-0286", "Network Security Configuration Allowing Trust in User-Provided CAs", "android", "android",
            NETWORK_1,
        ),
        MastgTest(
            "MASTG-TEST-0396", "References to URLSessionDelegate Bypassing Certificate Validation", "ios", "ios", NETWORK_1,
            "active", _PROBES_VALIDATION,
        ),
        MastgTest(
            "MASTG-TEST-0397", "References to WKNavigationDelegate Bypassing Certificate Validation", "ios", "ios", NETWORK_1,
            "active", _PROBES_VALIDATION,
        ),
        # Identity pinning (MASVS-NETWORK-2).
        MastgTest("MASTG-TEST-0242", "Missing Certificate Pinning in Network Security Configuration", *_ANDROID, NETWORK_2),
        MastgTest("MASTG-TEST-0243", "Expired Certificate Pins in the Network Security Configuration", *_ANDROID, NETWORK_2),
        MastgTest(
            "MASTG-TEST-0244", "Missing Certificate Pinning in Network Traffic", "network", "android", NETWORK_2, "active",
            "declare which hosts the app must pin (app.must_pin) and install tlsgate's CA on the device",
        ),
        MastgTest("MASTG-TEST-0385", "Missing Certificate Pinning in ATS", "ios", "ios", NETWORK_2),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """What one (check, kind) of finding evidences. `kind` "*" is every kind of the check; `check` "*" every check.

    `tests` are the MASTG tests a finding of this kind shows failing (or, when its action is `passed`, or
    `outcome` is "pass", passing). Without tests, `reason` says why none applies. `when` limits the row to
    findings whose evidence holds that (key, value); other findings of the kind evidence nothing.
    """

    check: str
    kind: str
    tests: tuple[str, ...] = ()
    reason: str = ""
    masvs: tuple[str, ...] = ()  # a control evidenced without a MASTG test (the tests' controls are added)
    outcome: str = "fail"
    when: tuple[str, str] | None = None

    @property
    def controls(self) -> tuple[str, ...]:
        found = [*self.masvs, *(TESTS[test].masvs for test in self.tests)]
        return tuple(sorted(set(found)))


_SERVER = "judges the server tlsgate reached, not the app: MASTG tests the app"
_VALIDATION = ("MASTG-TEST-0282", "MASTG-TEST-0284", "MASTG-TEST-0396", "MASTG-TEST-0397")
_HOSTNAME = ("MASTG-TEST-0234", "MASTG-TEST-0283", "MASTG-TEST-0396", "MASTG-TEST-0397")
_VERSIONS_STATIC = ("MASTG-TEST-0217", "MASTG-TEST-0343", "MASTG-TEST-0344", "MASTG-TEST-0345")

ROWS: Final[tuple[Row, ...]] = (
    Row("*", "check_failed", reason="tlsgate could not judge (an internal failure, blocked to fail closed): evidences nothing"),
    # What the app sends.
    Row("cleartext", "*", ("MASTG-TEST-0236", "MASTG-TEST-0238")),
    Row("client_protocol", "version_too_low", ("MASTG-TEST-0218", "MASTG-TEST-0348", *_VERSIONS_STATIC)),
    *(
        Row(
            "client_ciphers", kind, masvs=(NETWORK_1,),
            reason="MASTG has no network test of the suites an app offers (MASTG-TEST-0345 reads an embedded stack's code)",
        )
        for kind in ("broken_suites_offered", "only_weak_suites", "weak_suites_offered")
    ),
    Row("client_sni", "no_sni", reason="no MASTG test covers SNI"),
    Row(
        "client_trust", "certificate_refused",
        reason="the app refused tlsgate's certificate: pinning or a CA not installed; app.must_pin tells which (MASTG-TEST-0244)",
    ),
    # What the app accepts: the probes.
    Row("client_probe", "self_signed", _VALIDATION),
    Row("client_probe", "expired", _VALIDATION),
    Row("client_probe", "untrusted_ca", _VALIDATION),
    Row("client_probe", "wrong_host", _HOSTNAME),
    # Certificate and chain probes: one broken rule each, on a chain the device trusts.
    *(
        Row("client_probe", kind, _VALIDATION)
        for kind in (
            "not_yet_valid",
            "non_ca_issuer",
            "path_len_exceeded",
            "outside_name_constraints",
            "client_auth_only",
            "sha1_signature",
            "rsa_1024",
        )
    ),
    *(
        Row("client_probe", kind, _HOSTNAME)
        for kind in ("cn_only", "wildcard_too_broad", "wildcard_wrong_label", "ip_name_only")
    ),
    # Protocol probes: what tlsgate's side accepts, not its certificate.
    Row("client_probe", "tls_downgrade", ("MASTG-TEST-0218", "MASTG-TEST-0348", *_VERSIONS_STATIC)),
    Row(
        "client_probe",
        "weak_cipher",
        masvs=(NETWORK_1,),
        reason="no MASTG test covers the suites an app accepts (RSA key exchange, CBC, SHA-1): MASVS-NETWORK-1 itself",
    ),
    Row(
        "client_probe",
        "anon_cipher",
        masvs=(NETWORK_1,),
        reason="no MASTG test covers anonymous suites; accepting one means no server authentication at all",
    ),
    Row(
        "client_probe", "campaign_summary",
        reason="a device's roll-up of the per-probe findings, which name their own MASTG tests: mapping it too would "
        "pass or fail each test twice (and pass tests whose probes never ran)",
    ),
    # Falling back to, or being stripped down to, cleartext is cleartext traffic on the wire.
    Row("fallback", "insecure_fallback", ("MASTG-TEST-0236", "MASTG-TEST-0238")),
    Row("fallback", "starttls_strip_accepted", ("MASTG-TEST-0236", "MASTG-TEST-0239", "MASTG-TEST-0323")),
    Row("fallback", "starttls_strip_refused", ("MASTG-TEST-0236", "MASTG-TEST-0239", "MASTG-TEST-0323")),
    # The app against its own declaration (`app:`).
    Row("conformance", "cleartext_forbidden", ("MASTG-TEST-0236", "MASTG-TEST-0239", "MASTG-TEST-0323")),
    Row(
        "conformance", "below_declared_min_version", ("MASTG-TEST-0218", "MASTG-TEST-0348", *_VERSIONS_STATIC),
        reason="the server side of it judges the server against the app's minimum (an outage), not the app",
        when=("side", "client"),
    ),
    Row("conformance", "no_forward_secrecy", reason=_SERVER + " (against the forward secrecy the app requires)"),
    Row("conformance", "pin_mismatch", reason=_SERVER + " (against the app's own pins: the app would refuse it)"),
    Row("conformance", "pins_expired", ("MASTG-TEST-0243",)),
    Row("conformance", "pins_expire_soon", masvs=(NETWORK_2,), reason="a warning before MASTG-TEST-0243 fails"),
    Row("conformance", "user_cas_in_release", ("MASTG-TEST-0286",)),
    Row("pinning", "not_pinned", ("MASTG-TEST-0244", "MASTG-TEST-0242", "MASTG-TEST-0385")),
    Row("pinning", "pinned", ("MASTG-TEST-0244",), outcome="pass"),
    Row(
        "pinning", "ca_not_installed", masvs=(NETWORK_2,),
        reason="tlsgate's CA is not installed on the device: says nothing about pinning",
    ),
    Row("pinning", "undetermined", masvs=(NETWORK_2,), reason="no other host told pinning from a CA not installed"),
    # The server: tlsgate's own upstream policy.
    *(Row(check, "*", reason=_SERVER) for check in ("protocol", "cipher", "certificate", "pin", "revocation", "ct", "tls")),
    # The proxy's own bounds and the network.
    Row("client_hello", "*", reason="a ClientHello tlsgate would not wait for (flooded, oversized, malformed): a proxy bound"),
    Row("request", "*", reason="a request tlsgate would not forward (its bounds, an ambiguous header): a proxy bound"),
    Row("destination", "*", reason="guards the proxy host and its network, not a property of the app"),
    Row("quic", "*", reason="QUIC refused so the app falls back to TCP, where its TLS is judged"),
    Row("fault", "*", reason="a network fault: nothing was judged"),
    Row("payload", "*", reason="what a request carries is MASVS-STORAGE/CRYPTO/PRIVACY ground; this table maps MASVS-NETWORK"),
)  # fmt: skip

_BY_KEY: Final[dict[tuple[str, str], Row]] = {(row.check, row.kind): row for row in ROWS}


@functools.lru_cache(maxsize=4096)  # a report asks once per line; a run has a few dozen (check, kind)
def row_for(check: str, kind: str | None) -> Row | None:
    """The most specific row: (check, kind), then (check, "*"), then ("*", kind); None when none applies."""
    kind = kind or ""
    return _BY_KEY.get((check, kind)) or _BY_KEY.get((check, "*")) or _BY_KEY.get(("*", kind))


@dataclass(frozen=True)
class Refs:
    """What one finding evidences: the tests, the controls, and whether it shows them failed or passed."""

    tests: tuple[str, ...] = ()
    masvs: tuple[str, ...] = ()
    result: str = "fail"  # "fail" | "pass"

    def __bool__(self) -> bool:
        return bool(self.tests or self.masvs)

    def as_dict(self) -> dict[str, Any]:
        return {"tests": list(self.tests), "masvs": list(self.masvs), "result": self.result}


NONE: Final = Refs()


def refs(check: str, kind: str | None, evidence: Mapping[str, Any] | None = None, action: str = "") -> Refs:
    """The MASTG tests and MASVS controls a finding evidences, from the table alone."""
    return lookup(check, kind, evidence, action) or NONE


def lookup(check: str, kind: str | None, evidence: Mapping[str, Any] | None = None, action: str = "") -> Refs | None:
    """`refs`, or None when the table has no row for this (check, kind) (a kind a newer tlsgate wrote)."""
    row = row_for(check, kind)
    if row is None:
        return None
    if row.when is not None and (evidence or {}).get(row.when[0]) != row.when[1]:
        return NONE
    return _refs_of(row, row.outcome == "pass" or action == "passed")


@functools.lru_cache(maxsize=512)  # a report asks once per line of a file that may hold a million
def _refs_of(row: Row, passed: bool) -> Refs:
    return Refs(row.tests, row.controls, "pass" if passed else "fail")


# -- reading the field back from a findings file --------------------------------------------------

TEST_ID = re.compile(r"MASTG-TEST-\d{4}")
CONTROL_ID = re.compile(r"MASVS-[A-Z]{2,12}-\d{1,2}")
MAX_IDS = 16


def from_record(value: Any) -> tuple[Refs, str | None]:
    """A finding's own `mastg` field, as a newer tlsgate may have written it for a kind this table does not know:
    only ids this table knows are kept (a file cannot invent a test or a link), and what was dropped is said."""
    if value is None:
        return NONE, None
    if not isinstance(value, dict):
        return NONE, "'mastg' is not an object; ignored"
    tests = _ids(value.get("tests"), TEST_ID, TESTS)
    masvs = _ids(value.get("masvs"), CONTROL_ID, CONTROLS)
    result = value.get("result")
    dropped = _count(value.get("tests")) - len(tests) + _count(value.get("masvs")) - len(masvs)
    note = f"'mastg' names {dropped} id(s) this tlsgate does not know; ignored" if dropped > 0 else None
    return Refs(tests, masvs, "pass" if result == "pass" else "fail"), note


def _count(value: Any) -> int:
    return min(len(value), MAX_IDS * 4) if isinstance(value, list) else int(value is not None)


def _ids(value: Any, pattern: re.Pattern[str], known: Iterable[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    allowed = set(known)
    kept = [item for item in value[: MAX_IDS * 4] if isinstance(item, str) and pattern.fullmatch(item) and item in allowed]
    return tuple(dict.fromkeys(kept))[:MAX_IDS]


# -- the gate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """`--fail-on`: a severity (blocked or at least this severe), MASVS controls, MASTG tests, or several of
    them comma-separated; a finding fails when any term does. A control or test fails on a finding that
    evidences it failing, whatever its severity; a finding the app passed never fails."""

    threshold: int | None = None
    ids: frozenset[str] = frozenset()

    def fails(self, action: str, severity: str, evidenced: Refs) -> bool:
        if self.threshold is not None and fails(action, severity, self.threshold):
            return True
        if not self.ids or action == "passed" or evidenced.result != "fail":
            return False
        return any(name in self.ids for name in (*evidenced.tests, *evidenced.masvs))

    def describe(self) -> str:
        terms = [f"blocked or >= {SEVERITIES[self.threshold]}"] if self.threshold is not None else []
        return ", ".join(terms + [f"{name} failed" for name in sorted(self.ids)]) or "nothing"


GATE_HELP: Final = f"{'|'.join(GATE_LEVELS)}, a MASVS control ({', '.join(CONTROLS)}) or a MASTG test id, comma-separated"


def parse_gate(spec: str) -> Gate:
    """`high`, `MASVS-NETWORK-2`, `MASTG-TEST-0244`, `medium,MASVS-NETWORK-1`; ValueError naming what is accepted."""
    threshold: int | None = None
    ids: set[str] = set()
    for raw in spec.split(","):
        term = raw.strip()
        if term.lower() in GATE_LEVELS:
            level = RANK[term.lower()]
            threshold = level if threshold is None else min(threshold, level)
        elif term.upper() in CONTROLS or term.upper() in TESTS:
            ids.add(term.upper())
        else:
            known = ", ".join(sorted(TESTS))
            raise ValueError(
                f"--fail-on: {term!r} is not a severity ({', '.join(GATE_LEVELS)}), a MASVS control this table maps "
                f"({', '.join(CONTROLS)}) or a MASTG test it maps ({known})"
            )
    if threshold is None and not ids:
        raise ValueError(f"--fail-on wants {GATE_HELP}")
    return Gate(threshold, frozenset(ids))
