"""tlsgate's mitmproxy add-ons: thin glue that gathers facts from hooks, asks `tlsgate.checks`, and applies the verdict."""

from __future__ import annotations

from mitmproxy import version as mitmproxy_version

from tlsgate.addons.access import ClientAccess
from tlsgate.addons.auththrottle import AuthThrottle
from tlsgate.addons.cleartext import CleartextGuard
from tlsgate.addons.client_audit import ClientAudit
from tlsgate.addons.client_bounds import ClientBounds
from tlsgate.addons.conformance import Conformance
from tlsgate.addons.containment import ContainFailures
from tlsgate.addons.destination import DestinationGuard
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.lifetime import Lifetime
from tlsgate.addons.limits import ClientLimits
from tlsgate.addons.logsafety import SafeLog
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.payload import PayloadInspector
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.quic import QuicGuard
from tlsgate.addons.request_hygiene import RequestHygiene
from tlsgate.addons.resolve import Resolve
from tlsgate.addons.state import Connections
from tlsgate.addons.upstream_timeouts import UpstreamTimeouts
from tlsgate.addons.upstream_tls import UpstreamTls
from tlsgate.addons.wireguard import WireGuardPeers
from tlsgate.sinks.metrics import Metrics


def make_addons() -> list[object]:
    """Every tlsgate add-on, wired together.

    Order matters: the policy and sinks load before the checks, and the shared
    connection table comes last so its `client_disconnected` runs after every
    add-on that still reads a closing connection's state.
    """
    store = PolicyStore()
    metrics = Metrics(mitmproxy_version.VERSION)
    sink = FindingsSink(metrics=metrics)  # the recording path's sinks: findings file, console, metrics
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
        MetricsExporter(connections, metrics),
        resolve,
        WireGuardPeers(),  # installs the per-device WireGuard server before mitmproxy starts its servers
        lifetime,
        RequestHygiene(connections, sink),  # before any check reads a header
        DestinationGuard(connections, sink, resolve.redirects),  # after Resolve: judges the address Resolve chose
        CleartextGuard(connections, sink),
        QuicGuard(connections, sink),
        UpstreamTimeouts(connections, sink),  # after DestinationGuard (address settled), before UpstreamTls
        UpstreamTls(connections, sink),
        ClientAudit(connections, sink),
        Conformance(connections, sink),  # after UpstreamTls and ClientAudit: reads the facts they gathered
        PayloadInspector(connections, sink),  # after every check that may refuse a request on other grounds
        ContainFailures(sink),  # mitmproxy's crash tracebacks and asyncio's error floods: one line, counted
        ClientBounds(connections, sink),  # last to choose layers: wraps what the others chose
        connections,
    ]
