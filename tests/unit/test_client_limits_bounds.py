"""ClientLimits remembers a bounded number of addresses: a scan from many source addresses cannot grow it for ever."""

from __future__ import annotations

from mitmproxy.test import taddons, tflow

from tlsgate.addons.limits import MAX_SAID, ClientLimits


def _client(address: str):
    client = tflow.tclient_conn()
    client.peername = (address, 40000)
    client.error = None
    return client


def test_refusal_log_times_are_bounded_and_counts_are_dropped_at_zero() -> None:
    limits = ClientLimits()
    with taddons.context(limits) as tctx:
        tctx.configure(limits, tlsgate_max_client_connections=1)
        held = []
        for n in range(MAX_SAID + 50):
            address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            first, second = _client(address), _client(address)
            limits.client_connected(first)
            limits.client_connected(second)  # over the cap of 1: refused, and its address's log time remembered
            assert second.error and not first.error
            held.append(first)
        assert len(limits._said) == MAX_SAID
        for client in held:
            limits.client_disconnected(client)
        assert not limits.open  # an address with nothing open is forgotten, not kept at zero
