"""tlsgate's mitmproxy addons: thin shells that gather facts from hooks and apply the core's verdicts."""

from __future__ import annotations

from proxy.addons.cleartext import CleartextGuard
from proxy.addons.findings import FindingsSink
from proxy.addons.policy import PolicyStore
from proxy.addons.resolve import Resolve
from proxy.addons.upstream_tls import UpstreamTls


def make_addons() -> list[object]:
    """Every tlsgate addon, wired together; order matters: the policy and sinks load before the checks."""
    store = PolicyStore()
    sink = FindingsSink()
    return [store, sink, Resolve(), CleartextGuard(store, sink), UpstreamTls(store, sink)]
