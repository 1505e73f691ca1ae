"""tlsgate's mitmproxy addons: thin shells that gather facts from hooks and apply the core's verdicts."""

from __future__ import annotations

from mitmproxy import version as mitmproxy_version

from proxy.addons.cleartext import CleartextGuard
from proxy.addons.client_audit import ClientAudit
from proxy.addons.findings import FindingsSink
from proxy.addons.metrics import MetricsExporter
from proxy.addons.policy import PolicyStore
from proxy.addons.resolve import Resolve
from proxy.addons.upstream_tls import UpstreamTls
from proxy.metrics import Metrics


def make_addons() -> list[object]:
    """Every tlsgate addon, wired together; order matters: the policy and sinks load before the checks."""
    store = PolicyStore()
    sink = FindingsSink()
    metrics = Metrics(mitmproxy_version.VERSION)
    sink.log.subscribe(metrics.on_finding)
    return [
        store,
        sink,
        MetricsExporter(store, metrics),
        Resolve(),
        CleartextGuard(store, sink),
        UpstreamTls(store, sink, metrics),
        ClientAudit(store, sink),
    ]
