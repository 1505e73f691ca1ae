"""Prometheus metrics: what the dashboards and alert rules read.

Cardinality is bounded by construction, because tlsgate runs for days beside a
device farm: no URL, path, user or client-address label anywhere. Hosts appear
only as the host patterns a policy names; devices only as the names the
policy gives them or WireGuard peer names, both chosen by the operator ("unnamed" otherwise); versions and suites come from the
small set OpenSSL can negotiate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy import __version__
from proxy.sinks.findings import Finding
from proxy.tls.plaintext import PROTOCOLS

UNNAMED = "unnamed"
NONE = "none"


class Metrics:
    def __init__(self, mitmproxy_version: str = "unknown") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.findings.labels(finding.severity, finding.check, finding.action, finding.device or UNNAMED).inc()
        if finding.check == "cleartext":
            protocol = finding.evidence.get("protocol") if isinstance(finding.evidence, dict) else None
            protocol = "http" if protocol == "ws" else protocol
            self.cleartext.labels(protocol if protocol in PROTOCOLS else "unknown", finding.action).inc()

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
