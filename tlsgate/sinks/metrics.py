"""Prometheus metrics: what the dashboards and alert rules read.

Cardinality is bounded by construction, because tlsgate runs for days beside a
device farm: no URL, path, user or client-address label anywhere. Hosts appear
only as the host patterns a policy names; devices only as the names the
policy gives them or WireGuard peer names, both chosen by the operator ("unnamed" otherwise); versions and suites come from the
small set OpenSSL can negotiate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector, generate_latest

from tlsgate import __version__
from tlsgate.sinks.findings import Finding
from tlsgate.tls.plaintext import PROTOCOLS
from tlsgate.tls.probes import PROBE_KINDS

UNNAMED = "unnamed"
PAYLOAD_KINDS = (
    "ecb",
    "deterministic_encryption",
    "secret_in_url",
    "unsigned_jwt",
    "basic_auth_third_party",
    "provider_key",
    "identifier",
)
NONE = "none"
# `tlsgate_app_conformance_total{check, kind}`: what an app's traffic did against its own declaration.
APP_KINDS = {
    "conformance": (
        "cleartext_forbidden", "pin_mismatch", "pins_expire_soon", "pins_expired", "below_declared_min_version",
        "no_forward_secrecy", "user_cas_in_release",
    ),
    "pinning": ("not_pinned", "pinned", "ca_not_installed", "undetermined"),
}  # fmt: skip


class Metrics:
    def __init__(self, mitmproxy_version: str = "unknown") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_* (CPU, RSS, open fds, start time) and python_info, as every Prometheus client exports them:
        # the soak and fd-exhaustion alerts read these, and dashboards expect them.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            "tlsgate_build_info", "tlsgate and mitmproxy versions; always 1.", ["version", "mitmproxy_version"], registry=r
        )
        self.build_info.labels(__version__, mitmproxy_version).set(1)
        self.requests = Counter(
            "tlsgate_requests_total",
            "HTTP requests through the proxy by decision (allowed, blocked, reported), the check that decided, "
            "and transport (tcp; quic for HTTP/3).",
            ["decision", "check", "transport"],
            registry=r,
        )
        self.upstream_connections = Counter(
            "tlsgate_upstream_connections_total",
            "TLS connections to upstream servers by decision, the first check that objected, and transport (tcp, quic).",
            ["decision", "check", "transport"],
            registry=r,
        )
        self.handshakes = Counter(
            "tlsgate_tls_handshakes_total",
            "Completed or failed TLS handshakes by side (client, server), protocol version, suite and transport (tcp, quic).",
            ["side", "result", "version", "suite", "transport"],
            registry=r,
        )
        self.quic_connections = Counter(
            "tlsgate_quic_connections_total",
            "QUIC connections from clients by decision: refused (quic: refuse), inspected (quic: inspect), "
            "reported (quic: refuse in report mode: inspected, and a finding says it would be refused).",
            ["decision"],
            registry=r,
        )
        self.pin_checks = Counter(
            "tlsgate_pin_checks_total", "Pin set checks on upstream chains by result.", ["result"], registry=r
        )
        self.findings = Counter(
            "tlsgate_findings_total",
            "Findings by severity, check, action and device (as named in the policy).",
            ["severity", "check", "action", "device"],
            registry=r,
        )
        self.cleartext = Counter(
            "tlsgate_cleartext_total",
            "Cleartext findings (plain HTTP/WebSocket requests, non-TLS streams) by protocol and action.",
            ["protocol", "action"],
            registry=r,
        )
        self.payload = Counter(
            "tlsgate_payload_findings_total",
            "Payload findings (inside decrypted requests) by kind (ecb, deterministic_encryption, secret_in_url, "
            "unsigned_jwt, basic_auth_third_party, provider_key, identifier), action, and whether the host is one no "
            "rule names (third_party). Never a value, field or identifier kind.",
            ["kind", "action", "third_party"],
            registry=r,
        )
        self.app_conformance = Counter(
            "tlsgate_app_conformance_total",
            "Traffic held to the app's own declaration (`app:` rules from `tlsgate import`) by check (conformance, "
            "pinning), kind (cleartext_forbidden, pin_mismatch, pins_expire_soon, ..., not_pinned, pinned, "
            "ca_not_installed, undetermined) and action.",
            ["check", "kind", "action"],
            registry=r,
        )
        for check, kinds in APP_KINDS.items():  # present from the start, so increase() sees the first one
            for kind in kinds:
                self.app_conformance.labels(check, kind, "passed" if kind == "pinned" else "reported")
        self.cert_expiry = Gauge(
            "tlsgate_certificate_expiry_timestamp_seconds",
            "Earliest expiry (Unix time) in the last chain seen for each host pattern a policy names.",
            ["host"],
            registry=r,
        )
        self.reloads = Counter(
            "tlsgate_policy_reloads_total", "Policy load attempts by result (ok, failed).", ["result"], registry=r
        )
        self.last_reload = Gauge(
            "tlsgate_policy_last_reload_success_timestamp_seconds", "Unix time the policy in force was loaded.", registry=r
        )
        self.rules = Gauge("tlsgate_policy_rules", "Number of rules in the policy in force.", registry=r)
        self.latency = Histogram(
            "tlsgate_upstream_response_seconds",
            "Time from the request's last byte sent upstream to the response's first byte.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.open_connections = Gauge(
            "tlsgate_open_connections", "Connections open now, by side (client, server).", ["side"], registry=r
        )
        for side in ("client", "server"):
            self.open_connections.labels(side).set(0)
        self.client_bounds = Counter(
            "tlsgate_client_bounds_total",
            "Client connections closed for going past a bound: hello_bytes, hello_records, hello_malformed "
            "(ClientHello), request_head (431), head_timeout (too slow to its first request).",
            ["bound"],
            registry=r,
        )
        self.probe_results = Counter(
            "tlsgate_probe_results_total",
            "Probe connections by device (as named in the policy, else unnamed), kind (the probe kinds, else other) "
            "and result: refused (the app passed), accepted (it talked to the impostor), unservable (the probe "
            "negotiated beyond its offer and tested nothing).",
            ["device", "kind", "result"],
            registry=r,
        )
        self.internal_errors = Counter(
            "tlsgate_internal_errors_total",
            "Exceptions contained instead of logged as tracebacks: connection (mitmproxy's per-connection crash), "
            "accept (out of file descriptors), asyncio (other unhandled errors).",
            ["where"],
            registry=r,
        )
        for bound in ("hello_bytes", "hello_records", "hello_malformed", "request_head", "head_timeout"):
            self.client_bounds.labels(bound)
        for where in ("connection", "accept", "asyncio"):
            self.internal_errors.labels(where)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for result in ("match", "mismatch", "expired"):  # present from the start, so increase() sees the first one
            self.pin_checks.labels(result)
        for decision in ("refused", "inspected", "reported"):
            self.quic_connections.labels(decision)
        self._named_hosts: set[str] = set()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- sinks the addons call ------------------------------------------------------------------

    def on_finding(self, finding: Finding) -> None:
        """A finding line; a follow-up line (`occurrences`) is not counted again: each occurrence it stands for
        was counted as it happened (`on_repeat`)."""
        if finding.occurrences is None:
            self.on_repeat(finding)

    def on_repeat(self, finding: Finding) -> None:
        """One occurrence of a finding, written or only counted: `tlsgate_findings_total`, and its check's own
        counter as FINDING_METRICS says."""
        self.findings.labels(finding.severity, finding.check, finding.action, finding.device or UNNAMED).inc()
        row = FINDING_METRICS.get(finding.check)
        if row is None or row.counter is None or row.labels is None:
            return
        labels = row.labels(finding)
        if labels is not None:
            getattr(self, row.counter).labels(*labels).inc()

    def on_reload(self, result: str, rule_count: int | None, host_patterns: Iterable[str] = ()) -> None:
        """A policy load attempt; on success, the rule count and the host patterns the policy names."""
        self.reloads.labels(result).inc()
        if rule_count is None:
            return
        self.last_reload.set(time.time())
        self.rules.set(rule_count)
        named = set(host_patterns)
        for stale in self._named_hosts - named:
            self.cert_expiry.remove(stale)
        self._named_hosts = named

    def request(self, decision: str, check: str | None, transport: str = "tcp") -> None:
        self.requests.labels(decision, check or NONE, transport).inc()

    def upstream_connection(self, decision: str, check: str | None, transport: str = "tcp") -> None:
        self.upstream_connections.labels(decision, check or NONE, transport).inc()

    def handshake(self, side: str, ok: bool, version: str | None, suite: str | None, transport: str = "tcp") -> None:
        self.handshakes.labels(side, "ok" if ok else "failed", version or NONE, suite or NONE, transport).inc()

    def internal_error(self, where: str) -> None:
        self.internal_errors.labels(where).inc()

    def quic_connection(self, decision: str) -> None:
        self.quic_connections.labels(decision).inc()

    def pin_check(self, result: str) -> None:
        self.pin_checks.labels(result).inc()

    def certificate_expiry(self, host_pattern: str | None, not_after: Iterable[float]) -> None:
        """Only for patterns the policy names: an arbitrary host name would be an unbounded label."""
        times = list(not_after)
        if host_pattern is None or host_pattern not in self._named_hosts or not times:
            return
        self.cert_expiry.labels(host_pattern).set(min(times))


# -- what each check's findings count ---------------------------------------------------------------


@dataclass(frozen=True)
class FindingMetric:
    """What a finding of one check counts besides `tlsgate_findings_total` (which every finding counts).

    `counter` names a `Metrics` attribute; `labels` reads that counter's labels
    from the finding, or None when this finding does not count there. A check
    with neither counts in `tlsgate_findings_total` only. Data, not branches: a
    new check is one row here, and a test fails while a check has none.
    """

    counter: str | None = None
    labels: Callable[[Finding], tuple[str, ...] | None] | None = None


def _evidence(finding: Finding) -> dict[str, object] | None:
    return finding.evidence if isinstance(finding.evidence, dict) else None


def _cleartext_labels(finding: Finding) -> tuple[str, ...]:
    evidence = _evidence(finding)
    protocol = evidence.get("protocol") if evidence is not None else None
    protocol = "http" if protocol == "ws" else protocol
    return (protocol if isinstance(protocol, str) and protocol in PROTOCOLS else "unknown", finding.action)


def _app_labels(finding: Finding) -> tuple[str, ...] | None:
    evidence = _evidence(finding)
    if evidence is None:
        return None
    kind = evidence.get("kind")
    return (finding.check, kind if isinstance(kind, str) and kind in APP_KINDS[finding.check] else "other", finding.action)


def _payload_labels(finding: Finding) -> tuple[str, ...] | None:
    evidence = _evidence(finding)
    if evidence is None:
        return None
    kind = evidence.get("kind")
    third = "true" if evidence.get("third_party") else "false"
    return (kind if isinstance(kind, str) and kind in PAYLOAD_KINDS else "other", finding.action, third)


# `tlsgate_client_bounds_total{bound}` by the kind of the finding that closed the connection.
BOUND_KINDS = {
    "client_hello": {
        "oversized_hello": "hello_bytes",
        "fragmented_hello": "hello_records",
        "malformed_hello": "hello_malformed",
        "slow_client": "head_timeout",
    },
    "request": {"oversized_request_head": "request_head", "slow_client": "head_timeout"},
}


PROBE_RESULTS = {"passed": "refused", "blocked": "accepted"}


def _probe_labels(finding: Finding) -> tuple[str, ...] | None:
    """One probe connection's outcome; the campaign summary (a roll-up of these) is not counted again."""
    evidence = _evidence(finding)
    kind = evidence.get("kind") if evidence is not None else None
    result = PROBE_RESULTS.get(finding.action)
    if evidence is None or kind == "campaign_summary" or result is None:
        return None
    if evidence.get("served") is False:
        result = "unservable"
    return (finding.device or UNNAMED, kind if isinstance(kind, str) and kind in PROBE_KINDS else "other", result)


def _bound_labels(finding: Finding) -> tuple[str, ...] | None:
    evidence = _evidence(finding)
    bound = BOUND_KINDS[finding.check].get(str(evidence.get("kind"))) if evidence is not None else None
    return (bound,) if bound is not None else None


FINDINGS_ONLY = FindingMetric()
# One row for every check a finding can name (`tlsgate.checks.model.Check`; a test holds the two together).
FINDING_METRICS: dict[str, FindingMetric] = {
    "cleartext": FindingMetric("cleartext", _cleartext_labels),
    "protocol": FINDINGS_ONLY,
    "cipher": FINDINGS_ONLY,
    "certificate": FINDINGS_ONLY,
    "pin": FINDINGS_ONLY,
    "tls": FINDINGS_ONLY,
    "client_protocol": FINDINGS_ONLY,
    "client_ciphers": FINDINGS_ONLY,
    "client_sni": FINDINGS_ONLY,
    "client_trust": FINDINGS_ONLY,
    "client_probe": FindingMetric("probe_results", _probe_labels),
    "client_hello": FindingMetric("client_bounds", _bound_labels),
    "quic": FINDINGS_ONLY,
    "destination": FINDINGS_ONLY,
    "request": FindingMetric("client_bounds", _bound_labels),
    "payload": FindingMetric("payload", _payload_labels),
    "fault": FINDINGS_ONLY,
    "conformance": FindingMetric("app_conformance", _app_labels),
    "pinning": FindingMetric("app_conformance", _app_labels),
    "revocation": FINDINGS_ONLY,
    "ct": FINDINGS_ONLY,
    "fallback": FINDINGS_ONLY,
}
