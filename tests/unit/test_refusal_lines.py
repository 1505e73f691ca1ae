"""mitmproxy's console lines for a handshake tlsgate failed on purpose carry tlsgate's check and rule instead.

A pin mismatch fails OpenSSL's verify callback ("unspecified certificate
verification error") and a refused QUIC connection is offered an ALPN no client
asks for (aioquic's "No common ALPN protocols"): true, but not why. The live
proof is in tests/live/test_modes.py (pin mismatch in every mode, QUIC in
WireGuard mode); these pin the rewriting itself.
"""

from __future__ import annotations

import logging

from mitmproxy.test import tflow

from tlsgate.sinks.refusals import RefusalReasons

PIN_DETAIL = "no certificate in the server's chain matches pin set 'prod'"


def line(text: str, client: tuple[str, int] | None = ("10.0.0.1", 5000), name: str = "mitmproxy.proxy.server") -> str:
    """What the console shows for a record mitmproxy would log, after the filter."""
    record = logging.makeLogRecord({"name": name, "msg": text, "levelno": logging.WARNING, "levelname": "WARNING"})
    if client is not None:
        record.client = client
    assert REASONS.filter(record) is True  # never drops a line
    return record.getMessage()


REASONS = RefusalReasons()


def client(address: str = "10.0.0.1", port: int = 5000):
    conn = tflow.tclient_conn()
    conn.peername = (address, port)
    return conn


def test_a_pin_refusal_names_check_and_rule_in_both_of_mitmproxys_lines() -> None:
    REASONS.note(client(), "Server", "api.test", "pin", "policy.yaml:9", PIN_DETAIL)
    server = line("Server TLS handshake failed. Certificate verify failed: unspecified certificate verification error")
    assert server == f"Server TLS handshake failed: tlsgate refused api.test: pin (rule policy.yaml:9): {PIN_DETAIL}"
    unreached = line(
        "Unable to establish TLS connection with server (Certificate verify failed: unspecified certificate verification "
        "error). Trying to establish TLS with client anyway. tlsgate keeps connection_strategy=eager."
    )
    assert unreached.startswith("Unable to establish TLS connection with server (tlsgate refused api.test: pin (rule ")
    assert unreached.endswith("). Trying to establish TLS with client anyway. tlsgate keeps connection_strategy=eager.")
    assert "unspecified" not in server + unreached
    # Said once per refusal: a later failure on the same address is mitmproxy's own again.
    later = "Server TLS handshake failed. Certificate verify failed: certificate has expired"
    assert line(later) == later


def test_a_quic_refusal_names_check_and_rule_and_aioquics_warning_is_demoted() -> None:
    reason = "tlsgate refused quic.test: quic (rule policy.yaml:1): the policy refuses QUIC"
    REASONS.note(client(port=6000), "Client", "quic.test", "quic", "policy.yaml:1", "the policy refuses QUIC")
    REASONS.note_quic_id("dc3650ab7780a315", reason)
    record = logging.makeLogRecord(
        {"name": "quic", "msg": "[dc3650ab7780a315] Error: 296, reason: No common ALPN protocols, frame_type: 6", "levelno": 30}
    )
    REASONS.filter(record)
    assert record.getMessage() == f"[dc3650ab7780a315] QUIC handshake closed on purpose: {reason}"
    assert record.levelno == logging.DEBUG
    shown = line("Client QUIC handshake failed. No common ALPN protocols", client=("10.0.0.1", 6000))
    assert shown == f"Client QUIC handshake failed: {reason}"
    other = "[0011223344556677] Error: 296, reason: No common ALPN protocols, frame_type: 6"  # not tlsgate's doing
    assert line(other, client=None, name="quic") == other


def test_a_refused_client_that_offered_no_alpn_is_named_too() -> None:
    REASONS.note(client(port=6001), "Client", "quic.test", "quic", "policy.yaml:1", "refused")
    shown = line("No QUIC context was provided, failing connection.", client=("10.0.0.1", 6001))
    assert shown == "Client QUIC handshake failed: tlsgate refused quic.test: quic (rule policy.yaml:1): refused"


def test_only_the_refused_clients_lines_change_and_reasons_end_with_the_connection() -> None:
    reasons = RefusalReasons(capacity=2)
    refused = client(port=7000)
    reasons.note(refused, "Server", "api.test", "pin", "p.yaml:3", "mismatch")
    for text, peer in (("Server TLS handshake failed. x", ("10.0.0.2", 7000)), ("client connect", ("10.0.0.1", 7000))):
        record = logging.makeLogRecord({"name": "mitmproxy.proxy.server", "msg": text})
        record.client = peer
        reasons.filter(record)
        assert record.getMessage() == text
    reasons.forget(refused)  # disconnected before mitmproxy said anything: nothing left to name a later connection
    record = logging.makeLogRecord({"name": "mitmproxy.proxy.server", "msg": "Server TLS handshake failed. x"})
    record.client = ("10.0.0.1", 7000)
    reasons.filter(record)
    assert record.getMessage() == "Server TLS handshake failed. x"
    for port in range(7001, 7010):  # bounded: a reason whose line never comes is dropped after `capacity` newer ones
        reasons.note(client(port=port), "Server", "api.test", "pin", "p.yaml:3", "mismatch")
    assert len(reasons._pending) == 2


def test_the_lines_rewritten_are_still_mitmproxys_and_aioquics() -> None:
    """The patterns follow mitmproxy's and aioquic's wording; an upgrade that rewords them fails here first."""
    import inspect

    import aioquic.quic.connection
    from mitmproxy.proxy.layers import tls as tls_layer
    from mitmproxy.proxy.layers.quic import _stream_layers

    tls_source = inspect.getsource(tls_layer)
    assert 'f"Server TLS handshake failed. {err}"' in tls_source
    assert 'f"Unable to establish {self.proto_name} connection with server ({err}). "' in tls_source
    quic_source = inspect.getsource(_stream_layers)
    assert 'f"Client QUIC handshake failed. {err}"' in quic_source
    assert "No QUIC context was provided, failing connection." in quic_source
    # quic_client_id: the first buffered Initial names the connection as aioquic's log lines do.
    assert "self.start_tls(header.destination_cid)" in quic_source and "self.handshake_datagram_buf" in quic_source
    aioquic_source = inspect.getsource(aioquic.quic.connection)
    assert '"Error: %d, reason: %s"' in aioquic_source and '"[%s] %s"' in aioquic_source
    assert '{"id": dump_cid(self._original_destination_connection_id)}' in aioquic_source
