"""tlsgate's mitmproxy add-ons: thin glue that gathers facts from hooks, asks `proxy.checks`, and applies the verdict."""

from __future__ import annotations

from mitmproxy import version as mitmproxy_version

from proxy.addons.access import ClientAccess
from proxy.addons.auththrottle import AuthThrottle
from proxy.addons.cleartext import CleartextGuard
from proxy.addons.client_audit import ClientAudit
from proxy.addons.client_bounds import ClientBounds
from proxy.addons.conformance import Conformance
from proxy.addons.containment import ContainFailures
from proxy.addons.destination import DestinationGuard
from proxy.addons.findings import FindingsSink
from proxy.addons.lifetime import Lifetime
from proxy.addons.limits import ClientLimits
from proxy.addons.logsafety import SafeLog
from proxy.addons.metrics import MetricsExporter
from proxy.addons.payload import PayloadInspector
from proxy.addons.policy import PolicyStore
from proxy.addons.quic import QuicGuard
from proxy.addons.request_hygiene import RequestHygiene
from proxy.addons.resolve import Resolve
from proxy.addons.state import Connections
from proxy.addons.upstream_timeouts import UpstreamTimeouts
from proxy.addons.upstream_tls import UpstreamTls
from proxy.addons.wireguard import WireGuardPeers
from proxy.sinks.metrics import Metrics


def make_addons() -> list[object]:
    """Every tlsgate add-on, wired together.

    Order matters: the policy and sinks load before the checks, and the shared
    connection table comes last so its `client_disconnected` runs after every
    add-on that still reads a closing connection's state.
    """
    store = PolicyStore()
    sink = FindingsSink()
    metrics = Metrics(mitmproxy_version.VERSION)
    sink.log.subscribe(metrics.on_finding)
    sink.log.subscribe_counts(metrics.on_repeat)
    lifetime = Lifetime()
    sink.log.subscribe(lifetime.on_finding)
    connections = Connections(store)
    resolve = Resolve()
    return [
        SafeLog(),  # first: console lines are escaped before any other add-on logs
        ClientAccess(),  # public clients off the LAN refused before any add-on spends work on them
        ClientLimits(),  # before any add-on spends work on a connection it would refuse
        AuthThrottle(),  # runs after mitmproxy's proxyauth: delays its repeated 407s
        store,
        sink,
        MetricsExporter(store, metrics),
        resolve,
        WireGuardPeers(),  # installs the per-device WireGuard server before mitmproxy starts its servers
        lifetime,
        RequestHygiene(connections, sink),  # before any check reads a header
        DestinationGuard(connections, sink, resolve),  # after Resolve: judges the address Resolve chose
        CleartextGuard(connections, sink),
        QuicGuard(connections, sink, metrics),
        UpstreamTimeouts(connections, sink, metrics),  # after DestinationGuard (address settled), before UpstreamTls
        UpstreamTls(connections, sink, metrics),
        ClientAudit(connections, sink),
        Conformance(connections, sink),  # after UpstreamTls and ClientAudit: reads the facts they gathered
        PayloadInspector(connections, sink),  # after every check that may refuse a request on other grounds
        ContainFailures(metrics),  # mitmproxy's crash tracebacks and asyncio's error floods: one line, counted
        ClientBounds(connections, sink, metrics),  # last to choose layers: wraps what the others chose
        connections,
    ]
